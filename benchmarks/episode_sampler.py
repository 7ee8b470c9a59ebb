r"""Time of the Omniglot episode sampler per batch, against a peer.

    python -m benchmarks.episode_sampler --repeats=7

`keras_meta.data.few_shot.sample_episodes` draws, turns and shifts the
images of a batch of episodes inside the `tf.data` pipeline; on a CPU it
shares the cores with the training step, so its time is taken from
training. It runs here, traced once, on synthetic uint8 28x28 images (as
`ImageClasses` holds them) in the shapes of the example script's CPU
defaults (MAML 20-way: 8 tasks of 20 classes x 2 images; ProtoNet: 1
episode of 30 classes x 6 images) with and without `shift=2`,
interleaved with a peer in the same process: the two-step way of turning
and shifting (four turned copies of every image, then two gathers) that
`_move_each` replaced, given the same draws. Both must give the same
images (checked). Reports the median over --repeats
timings of --batches batches, in ms per batch, and the ratio.
"""

import time

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

from benchmarks import common
from keras_meta.data import few_shot

flags.DEFINE_integer("repeats", 7, "Timings per configuration.")
flags.DEFINE_integer("batches", 20, "Batches per timing.")
flags.DEFINE_string("out", "episode_sampler.json", "JSON file in results/.")
FLAGS = flags.FLAGS

# name: (ways, shots + queries, tasks per batch); 100 classes of 20.
CONFIGS = {"maml_20way": (20, 2, 8), "protonet_30way": (30, 6, 1)}


def _two_step(images, quarter_turns, offsets):
    """The peer: every image turned four ways, one turn gathered, then the
    rows and the columns gathered at their shifted, clamped sources."""
    turned = [images]
    for _ in range(3):
        turned.append(tf.image.rot90(turned[-1]))
    stacked = tf.transpose(tf.stack(turned), [1, 0, 2, 3, 4])
    images = tf.gather(stacked, quarter_turns, axis=1, batch_dims=1)

    def source(size, by):
        return tf.clip_by_value(tf.range(size)[None] - by[:, None], 0,
                                size - 1)

    shape = tf.shape(images)
    rows = tf.gather(images, source(shape[1], offsets[:, 0]), axis=1,
                     batch_dims=1)
    return tf.gather(rows, source(shape[2], offsets[:, 1]), axis=2,
                     batch_dims=1)


def _sampler(classes, ways, per_class, tasks, shift, mover):
    saved = few_shot._move_each
    few_shot._move_each = mover  # traced now, so restored right after
    try:
        fn = tf.function(lambda seed: few_shot.sample_episodes(
            classes, seed, ways, 1, per_class - 1, tasks, True, shift))
        fn.get_concrete_function(tf.TensorSpec([2], tf.int32))
    finally:
        few_shot._move_each = saved
    return fn


def _ms_per_batch(fn, batches):
    start = time.perf_counter()
    for i in range(batches):
        fn(tf.constant([i, 1]))["query_x"].numpy()
    return 1000 * (time.perf_counter() - start) / batches


def main(argv):
    del argv
    rng = np.random.RandomState(0)
    images = (rng.rand(2000, 28, 28, 1) * 255).astype(np.uint8)
    classes = (tf.constant(images), tf.constant(np.arange(0, 2000, 20),
                                                tf.int32),
               tf.constant(np.full(100, 20), tf.int32), 20)
    results = {}
    for name, (ways, per_class, tasks) in CONFIGS.items():
        for shift in (0, 2):
            fns = {"move_each": _sampler(classes, ways, per_class, tasks,
                                         shift, few_shot._move_each),
                   "two_step": _sampler(classes, ways, per_class, tasks,
                                        shift, _two_step)}
            seed = tf.constant([5, 1])
            a, b = (fn(seed)["query_x"].numpy() for fn in fns.values())
            if not np.array_equal(a, b):
                raise AssertionError(f"{name} shift={shift}: the two ways "
                                     "give different images.")
            times = {k: [] for k in fns}
            for _ in range(FLAGS.repeats):  # interleaved
                for k, fn in fns.items():
                    times[k].append(_ms_per_batch(fn, FLAGS.batches))
            row = {k: float(np.median(v)) for k, v in times.items()}
            row["ratio"] = row["move_each"] / row["two_step"]
            results[f"{name} shift={shift}"] = dict(row, all=times)
            print(f"{name} shift={shift}: move_each "
                  f"{row['move_each']:.1f} ms, two_step "
                  f"{row['two_step']:.1f} ms per batch, ratio "
                  f"{row['ratio']:.2f}", flush=True)
    common.write_json(FLAGS.out, results)


if __name__ == "__main__":
    app.run(main)

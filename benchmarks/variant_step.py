"""Meta-step time of each MAML variant against plain MAML, same process.

Omniglot's 20-way 1-shot CPU defaults (conv4, 64 filters, strided; 1
inner step, 8 tasks, 1 query per class) on fixed random uint8 images of
Omniglot's shape, so the input pipeline is out of the timing. The
variants run interleaved with MAML, `--reps` times each, `--steps`
meta-steps per timing (one `fit` epoch); the ratio is each variant's
median over MAML's median of the same run.

    python -m benchmarks.variant_step --variants=proto_maml --reps=5
"""

import time

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

import keras
import keras_meta

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_list("variants", ["proto_maml"], "Variants timed against MAML.")
flags.DEFINE_integer("reps", 5, "Timings per variant (medians).")
flags.DEFINE_integer("steps", 20, "Meta-steps per timing.")
flags.DEFINE_integer("ways", 20, "Classes per episode.")
flags.DEFINE_string("out", "variant_step.json", "JSON file in results/.")

CLASSES = {"maml": keras_meta.MAML, "proto_maml": keras_meta.ProtoMAML,
           "anil": keras_meta.ANIL, "meta_sgd": keras_meta.MetaSGD}


def build(variant, ways):
    keras.utils.set_random_seed(0)
    net = keras_meta.models.conv4_classifier(ways)
    maml = CLASSES[variant](net, inner_learning_rate=0.4 * ways)
    maml.compile(optimizer="adam", loss=keras.losses.
                 SparseCategoricalCrossentropy(from_logits=True),
                 metrics=["accuracy"])
    return maml


def episodes(ways, tasks=8):
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(ways, dtype=np.int32), (tasks, 1))
    episode = {
        "support_x": rng.integers(0, 256, (tasks, ways, 28, 28, 1), np.uint8),
        "support_y": labels,
        "query_x": rng.integers(0, 256, (tasks, ways, 28, 28, 1), np.uint8),
        "query_y": labels}
    return tf.data.Dataset.from_tensors(episode).repeat()


def main(argv):
    del argv
    names = ["maml"] + [v for v in FLAGS.variants if v != "maml"]
    models = {name: build(name, FLAGS.ways) for name in names}
    data = episodes(FLAGS.ways)
    for model in models.values():  # trace and compile
        model.fit(data, steps_per_epoch=2, verbose=0)
    times = {name: [] for name in names}
    for _ in range(FLAGS.reps):
        for name, model in models.items():
            start = time.perf_counter()
            model.fit(data, steps_per_epoch=FLAGS.steps, verbose=0)
            times[name].append(1000 * (time.perf_counter() - start)
                               / FLAGS.steps)
    base = float(np.median(times["maml"]))
    rows, payload = [], {"ways": FLAGS.ways, "steps": FLAGS.steps,
                         "reps": FLAGS.reps, "variants": {}}
    for name in names:
        median = float(np.median(times[name]))
        rows.append([name, f"{median:.0f}", f"{median / base:.2f}x"])
        payload["variants"][name] = {"ms_per_step": times[name],
                                     "median_ms": median,
                                     "ratio_to_maml": median / base}
    common.print_table(["variant", "ms per meta-step", "vs MAML"], rows)
    common.write_json(FLAGS.out, payload)


if __name__ == "__main__":
    app.run(main)

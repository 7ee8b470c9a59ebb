"""LearnedOptimizer on `fit` tasks far from meta-training, against Adam.

Sanity checks of generality, not a tuning target: each task trains
`--steps` steps of batch 128 with `model.fit` on synthetic data (no
download) and reports the final training loss (`evaluate` on the whole
training set), per seed. The learned rules are untuned; Adam runs at each
rate of `--adam_lrs`.

Tasks:
- `regression_tanh`: MLP 8-64-64-1 (tanh), MSE on a smooth random target.
- `regression_bn_relu`: the same with BatchNormalization + ReLU.
- `gru_parity`: Embedding(4, 16) + GRU(32), whether a token occurs an odd
  number of times in a 10-token sequence.
- `conv_wide`: the benchmark convnet with (16, 32) filters, twice the
  width of `benchmarks.keras_fit`'s, on random-teacher images.

    python -m benchmarks.fit_generality --weights=per_tensor,<phi file>
"""

import functools

import keras
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

import keras_meta
from benchmarks import common
from benchmarks import fit_lib
from keras_meta.meta import problems

FLAGS = flags.FLAGS
flags.DEFINE_list("weights", ["per_tensor"], "Shipped weights names or phi "
                  "files of LearnedOptimizer rules to compare.")
flags.DEFINE_list("tasks", ["regression_tanh", "regression_bn_relu",
                            "gru_parity", "conv_wide"], "Tasks to run.")
flags.DEFINE_list("adam_lrs", ["1e-3", "3e-3", "1e-2"], "Adam rates.")
flags.DEFINE_list("seeds", ["0", "1"], "Seeds (data and initialization).")
flags.DEFINE_integer("steps", 500, "Training steps.")
flags.DEFINE_string("out", "fit_generality.json", "JSON file in results/.")


def _regression_data(seed, n=4096):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    w1, w2 = rng.normal(size=(2, 8)) / np.sqrt(8.0)
    y = np.sin(2.0 * x @ w1) + 0.5 * np.cos(3.0 * x @ w2) + 0.3 * (x @ w1) * (
        x @ w2)
    return x, y[:, None].astype("float32")


def _mlp_regressor(batch_norm):
    layers = [keras.Input((8,))]
    for _ in range(2):
        if batch_norm:
            layers += [keras.layers.Dense(64), keras.layers.BatchNormalization(),
                       keras.layers.ReLU()]
        else:
            layers.append(keras.layers.Dense(64, activation="tanh"))
    layers.append(keras.layers.Dense(1))
    return keras.Sequential(layers)


def _parity_data(seed, n=4096, length=10):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=(n, length)).astype("int32")
    return x, (np.sum(x == 0, axis=1) % 2).astype("int32")


def _gru():
    return keras.Sequential([keras.Input((10,), dtype="int32"),
                             keras.layers.Embedding(4, 16),
                             keras.layers.GRU(32), keras.layers.Dense(2)])


_CLASSIFY = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
# name: (model builder, data(seed), loss)
TASKS = {
    "regression_tanh": (functools.partial(_mlp_regressor, False),
                        _regression_data, "mse"),
    "regression_bn_relu": (functools.partial(_mlp_regressor, True),
                           _regression_data, "mse"),
    "gru_parity": (_gru, _parity_data, _CLASSIFY),
    "conv_wide": (functools.partial(problems.conv_model, filters=(16, 32)),
                  lambda seed: fit_lib.dataset(seed, 8192), _CLASSIFY),
}


def train(task, make_opt, seed, steps):
    """Final training loss of `task` after `steps` `fit` steps (NaN if not finite)."""
    build, data, loss = TASKS[task]
    x, y = data(seed)
    return fit_lib.train(build, make_opt, seed, x, y, steps=steps, loss=loss)


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")
    seeds = [int(s) for s in FLAGS.seeds]
    opts = {w: functools.partial(keras_meta.LearnedOptimizer, weights=w)
            for w in FLAGS.weights}
    opts.update({f"adam {lr}": functools.partial(keras.optimizers.Adam,
                                                 float(lr))
                 for lr in FLAGS.adam_lrs})
    results = {"steps": FLAGS.steps, "seeds": seeds, "tasks": {}}
    rows = []
    for task in FLAGS.tasks:
        per = {name: [train(task, make, s, FLAGS.steps) for s in seeds]
               for name, make in opts.items()}
        results["tasks"][task] = per
        rows.append([task] + [" / ".join(f"{v:.4g}" for v in per[name])
                              for name in opts])
        print(rows[-1], flush=True)
    common.print_table(["task (seeds " + "/".join(FLAGS.seeds) + ")"] +
                       list(opts), rows)
    common.write_json(FLAGS.out, results)


if __name__ == "__main__":
    app.run(main)

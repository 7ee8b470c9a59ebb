"""Held-out Keras models in `fit`: LearnedOptimizer (untuned) vs tuned Adam.

Models not used in meta-training: an MLP 784-20-10 with ReLU, a wider MLP
784-100-100-10 (sigmoid), and the strided convnet, each on synthetic
random-teacher data (8192 examples, new teacher per seed). Each run trains
`--steps` steps of batch 128 with `model.fit` and reports the final training
loss (`model.evaluate` on the whole training set). Adam's learning rate is
the grid value with the lowest mean final loss over seeds.

    python -m benchmarks.keras_fit --seeds=10
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

FLAGS = flags.FLAGS
flags.DEFINE_integer("seeds", 10, "Seeds per model and optimizer.")
flags.DEFINE_integer("steps", 500, "Training steps.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("num_examples", 8192, "Training set size.")
flags.DEFINE_list("models", ["mlp_relu", "mlp_wide", "conv"],
                  "Models (keys of benchmarks.fit_lib.MODELS).")
flags.DEFINE_list("adam_lrs", ["1e-4", "3e-4", "1e-3", "3e-3", "1e-2", "3e-2"],
                  "Adam learning-rate grid.")
flags.DEFINE_string("weights", None, "Shipped weights name or phi file "
                    "(default: the shipped default).")
flags.DEFINE_string("out", "keras_fit.json", "JSON file in results/.")


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")
    weights = FLAGS.weights
    results = {"steps": FLAGS.steps, "seeds": FLAGS.seeds,
               "batch_size": FLAGS.batch_size, "weights": weights or "shipped",
               "models": {}}
    rows = []
    for name in FLAGS.models:
        per = {"learned": [], "adam": {lr: [] for lr in FLAGS.adam_lrs}}
        for seed in range(FLAGS.seeds):
            x, y = fit_lib.dataset(seed, FLAGS.num_examples)
            train = functools.partial(fit_lib.train, steps=FLAGS.steps,
                                      batch_size=FLAGS.batch_size)
            per["learned"].append(train(
                name, lambda: keras_meta.LearnedOptimizer(weights=weights),
                seed, x, y))
            for lr in FLAGS.adam_lrs:
                per["adam"][lr].append(train(
                    name, lambda: keras.optimizers.Adam(float(lr)), seed, x, y))
            print(f"{name} seed {seed}: learned {per['learned'][-1]:.4f} "
                  f"adam " + " ".join(f"{lr}:{v[-1]:.4f}"
                                       for lr, v in per["adam"].items()),
                  flush=True)
        means = {lr: float(np.mean(v)) for lr, v in per["adam"].items()
                 if np.all(np.isfinite(v))}
        best_lr = min(means, key=means.get)
        learned = np.asarray(per["learned"])
        adam_best = np.asarray(per["adam"][best_lr])
        wins = int(np.sum(learned <= adam_best))
        entry = {
            "learned_mean": float(np.nanmean(learned)),
            "learned_std": float(np.nanstd(learned)),
            "learned_nan_runs": int(np.sum(~np.isfinite(learned))),
            "adam_best_lr": float(best_lr),
            "adam_best_mean": means[best_lr],
            "adam_best_std": float(np.std(adam_best)),
            "learned_le_adam_seeds": wins,
            "raw": {"learned": per["learned"], "adam": per["adam"]},
        }
        results["models"][name] = entry
        rows.append([name, f"{entry['learned_mean']:.4f} ± {entry['learned_std']:.4f}",
                     f"{entry['adam_best_mean']:.4f} ± {entry['adam_best_std']:.4f}",
                     best_lr, entry["learned_nan_runs"],
                     f"{wins}/{FLAGS.seeds}"])
    common.print_table(["model", "learned (untuned)", "Adam (best grid lr)",
                        "Adam lr", "NaN runs", "learned <= Adam"], rows)
    common.write_json(FLAGS.out, results)


if __name__ == "__main__":
    app.run(main)

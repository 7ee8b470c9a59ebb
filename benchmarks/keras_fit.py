"""Held-out Keras models in `fit`: LearnedOptimizer (untuned) vs tuned Adam.

Models not used in meta-training: an MLP 784-20-10 with ReLU, a wider MLP
784-100-100-10 (sigmoid), and the strided convnet, each on synthetic
random-teacher data (8192 examples, new teacher per seed). Each run trains
`--steps` steps of batch 128 with `model.fit` and reports the final
training loss (`model.evaluate` on the whole training set) and test loss
(`--test_examples` fresh examples of the same teacher). Adam's learning
rate is the grid value with the lowest mean final loss over seeds, chosen
apart for each of the two losses.

    python -m benchmarks.keras_fit --seeds=10
    python -m benchmarks.keras_fit --seeds=5 --learned=per_tensor,normalized+ema

`--learned` takes `benchmarks.lopt_suite`'s `--weights` specs ("default"
is the shipped default, `LearnedOptimizer()`).
"""

import functools

import keras
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

from benchmarks import common
from benchmarks import fit_lib

FLAGS = flags.FLAGS
flags.DEFINE_integer("seeds", 10, "Seeds per model and optimizer.")
flags.DEFINE_integer("steps", 500, "Training steps.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("num_examples", 8192, "Training set size.")
flags.DEFINE_integer("test_examples", 8192, "Held-out test set size.")
flags.DEFINE_list("models", ["mlp_relu", "mlp_wide", "conv"],
                  "Models (keys of benchmarks.fit_lib.MODELS).")
flags.DEFINE_list("adam_lrs", ["1e-4", "3e-4", "1e-3", "3e-3", "1e-2", "3e-2"],
                  "Adam learning-rate grid.")
flags.DEFINE_list("learned", ["default"], "LearnedOptimizer specs: "
                  "'default' or a shipped name or phi file, with "
                  "benchmarks.lopt_suite's '+option' suffixes.")
flags.DEFINE_string("out", "keras_fit.json", "JSON file in results/.")

SPLITS = ("train", "test")


def _stats(runs):
    """{split: {"mean", "std", "nan_runs"}} of a list of (train, test)."""
    runs = np.asarray(runs, dtype=float)
    return {split: {"mean": float(np.nanmean(runs[:, i])),
                    "std": float(np.nanstd(runs[:, i])),
                    "nan_runs": int(np.sum(~np.isfinite(runs[:, i])))}
            for i, split in enumerate(SPLITS)}


def run_model(name):
    """Every optimizer on `name` over the seeds: {"learned": {spec:
    runs}, "adam": {lr: runs}}, each run (training loss, test loss)."""
    per = {"learned": {s: [] for s in FLAGS.learned},
           "adam": {lr: [] for lr in FLAGS.adam_lrs}}
    for seed in range(FLAGS.seeds):
        (x, y), test = fit_lib.dataset(seed, FLAGS.num_examples,
                                       FLAGS.test_examples)
        train = functools.partial(fit_lib.train, name, seed=seed, x=x, y=y,
                                  steps=FLAGS.steps,
                                  batch_size=FLAGS.batch_size,
                                  test_data=test)
        for spec in FLAGS.learned:
            per["learned"][spec].append(
                train(fit_lib.learned_optimizer_factory(spec)))
        for lr in FLAGS.adam_lrs:
            per["adam"][lr].append(
                train(lambda: keras.optimizers.Adam(float(lr))))
        print(f"{name} seed {seed}: " + " ".join(
            f"{k}:{v[-1][0]:.4f}/{v[-1][1]:.4f}"
            for k, v in {**per["learned"], **per["adam"]}.items()),
            flush=True)
    return per


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")
    if FLAGS.test_examples < 1:
        raise ValueError(f"--test_examples must be >= 1, got "
                         f"{FLAGS.test_examples}.")
    results = {"steps": FLAGS.steps, "seeds": FLAGS.seeds,
               "batch_size": FLAGS.batch_size, "learned": FLAGS.learned,
               "models": {}}
    rows = []
    for name in FLAGS.models:
        per = run_model(name)
        adam = {lr: _stats(v) for lr, v in per["adam"].items()}
        entry = {"learned": {s: _stats(v) for s, v in per["learned"].items()},
                 "adam": adam, "raw": per}
        for i, split in enumerate(SPLITS):
            finite = {lr: s[split]["mean"] for lr, s in adam.items()
                      if not s[split]["nan_runs"]}
            best = min(finite, key=finite.get)
            entry[f"adam_best_lr_{split}"] = float(best)
            best_runs = np.asarray(per["adam"][best])[:, i]
            for spec, runs in per["learned"].items():
                wins = int(np.sum(np.asarray(runs)[:, i] <= best_runs))
                entry["learned"][spec][split]["le_adam_best_seeds"] = wins
                stats = entry["learned"][spec][split]
                rows.append([name, split, spec,
                             f"{stats['mean']:.4f} ± {stats['std']:.4f}",
                             f"{adam[best][split]['mean']:.4f} ± "
                             f"{adam[best][split]['std']:.4f}", best,
                             stats["nan_runs"], f"{wins}/{FLAGS.seeds}"])
        results["models"][name] = entry
    common.print_table(["model", "loss", "learned", "mean ± sd",
                        "Adam (best grid lr)", "Adam lr", "NaN runs",
                        "learned <= Adam"], rows)
    common.write_json(FLAGS.out, results)


if __name__ == "__main__":
    app.run(main)

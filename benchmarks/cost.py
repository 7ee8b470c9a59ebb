"""Cost of one `fit` step and optimizer memory: LearnedOptimizer vs Adam.

On a ~1M-parameter MLP (784-1024-256-10) and the small convnet, batch 128,
both optimizers measured in the same process: each `train_on_batch` call
(the same compiled train function `fit` runs) is timed after warm-up, and the
median over `--reps` repetitions of `--steps` steps is reported.

    python -m benchmarks.cost --reps=7

`--weights=default` measures `LearnedOptimizer()` (with its weight
average, `use_ema=True`); `--adam_ema` adds Adam with `use_ema=True`, the
peer of an averaged optimizer, as a row of its own. `--models` may also
name the suite's workloads (`benchmarks.suite.workloads`), each on its
own batch size and a batch of its seed-0 training data:

    python -m benchmarks.cost --models=embedding_text,transformer
"""

import time

import keras
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

from keras_meta.meta import problems

from benchmarks import common
from benchmarks.suite import runner
from benchmarks.suite import workloads

FLAGS = flags.FLAGS
flags.DEFINE_integer("reps", 7, "Repetitions (median reported).")
flags.DEFINE_integer("steps", 10, "Steps per repetition.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_list("weights", ["default", "per_tensor", "coordinatewise"],
                  "LearnedOptimizer specs to measure, as "
                  "benchmarks.lopt_suite --weights takes them ('default': "
                  "LearnedOptimizer()), each against Adam in the same run.")
flags.DEFINE_bool("adam_ema", False, "Also measure Adam(use_ema=True).")
flags.DEFINE_list("models", ["mlp_1m", "conv"],
                  "Models: mlp_1m, conv, or names of the suite's workloads.")
flags.DEFINE_string("out", "cost.json", "JSON file in results/.")

MODELS = {
    "mlp_1m": lambda: problems.mlp_model(hidden=(1024, 256), activation="relu"),
    "conv": problems.conv_model,
}


def build(name, opt):
    keras.utils.set_random_seed(0)
    if name in MODELS:
        model = MODELS[name]()
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        workload = workloads.WORKLOADS[name]
        model, loss = workload.build(), workload.loss
    model.compile(optimizer=opt, jit_compile=FLAGS.jit_compile, loss=loss)
    return model


def batch(name):
    """One training batch `(x, y)` for model `name`."""
    if name in MODELS:
        rng = np.random.default_rng(0)
        return (rng.normal(size=(FLAGS.batch_size, 28, 28, 1)).astype(
            "float32"), rng.integers(0, 10, FLAGS.batch_size).astype("int32"))
    if name not in workloads.WORKLOADS:
        raise ValueError(f"Unknown model {name!r}: expected one of "
                         f"{sorted(MODELS) + sorted(workloads.WORKLOADS)}.")
    workload = workloads.WORKLOADS[name]
    x, y = workload.data(0).train
    return x[:workload.batch_size], y[:workload.batch_size]


def opt_bytes(opt, model):
    n = model.count_params()
    total = 0
    for v in opt.variables:
        total += int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
    return total, total / n


def main(argv):
    del argv
    results = {"batch_size": FLAGS.batch_size, "jit_compile": FLAGS.jit_compile,
               "models": {}}
    rows = []
    for name in FLAGS.models:
        x, y = batch(name)
        models = {f"learned:{w}": build(
            name, runner.make_optimizer(runner.learned_spec(w)))
            for w in FLAGS.weights}
        if FLAGS.adam_ema:
            models["adam_ema"] = build(
                name, keras.optimizers.Adam(1e-3, use_ema=True))
        models["adam"] = build(name, keras.optimizers.Adam(1e-3))
        for m in models.values():
            for _ in range(3):
                m.train_on_batch(x, y)
        times = {k: [] for k in models}
        for _ in range(FLAGS.reps):
            for k, m in models.items():  # interleaved: same load for both
                start = time.perf_counter()
                for _ in range(FLAGS.steps):
                    m.train_on_batch(x, y)
                times[k].append((time.perf_counter() - start) / FLAGS.steps)
        med = {k: float(np.median(v)) for k, v in times.items()}
        mem = {k: opt_bytes(m.optimizer, m) for k, m in models.items()}
        entry = {
            "params": models["adam"].count_params(),
            "step_seconds_median": med, "step_seconds_all": times,
            "cost_ratio": {k: med[k] / med["adam"] for k in med},
            "optimizer_bytes": {k: v[0] for k, v in mem.items()},
            "optimizer_bytes_per_param": {k: v[1] for k, v in mem.items()},
            "memory_ratio": {k: mem[k][1] / mem["adam"][1] for k in mem},
        }
        results["models"][name] = entry
        for k in models:
            if k == "adam":
                continue
            rows.append([name, k, entry["params"],
                         f"{med[k] * 1e3:.2f}", f"{med['adam'] * 1e3:.2f}",
                         f"{entry['cost_ratio'][k]:.2f}",
                         f"{mem[k][1]:.1f}", f"{mem['adam'][1]:.1f}"])
    common.print_table(["model", "optimizer", "params", "learned ms/step",
                        "Adam ms/step",
                        "ratio", "learned B/param", "Adam B/param"], rows)
    common.write_json(FLAGS.out, results)


if __name__ == "__main__":
    app.run(main)

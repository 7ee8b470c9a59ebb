"""What `keras_meta.callbacks.ValidationControl` adds to a `fit`'s time.

For each development workload named, the same seeded fit (build, compile,
`--steps` steps, final evaluation: `benchmarks.suite.runner.fit`) with
`LearnedOptimizer(weights="normalized", use_ema=True)` alone, under
`ValidationControl` as the suite's `+control` (a check every 250 steps on
the validation split and as many training examples) and under the
callback's defaults (twenty checks per fit and one at its end),
interleaved for `--reps` repetitions in one process; prints each fit's
seconds, the median of each and their ratios to the fit alone.

    python -m benchmarks.control_cost --workloads=keywords,omniglot_conv --steps=1000 --reps=5
"""

import time

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

from benchmarks import common
from benchmarks.suite import dev_workloads
from benchmarks.suite import runner

FLAGS = flags.FLAGS
flags.DEFINE_list("workloads", ["keywords", "omniglot_conv"],
                  "Development workloads.")
flags.DEFINE_integer("steps", 1000, "Training steps per fit.")
flags.DEFINE_integer("reps", 5, "Interleaved repetitions.")

SPECS = {"alone": ("learned", "normalized", ("ema",)),
         "control": ("learned", "normalized", ("control", "ema")),
         "defaults": ("learned", "normalized", (
             "control", "control_decay_factor=0", "control_every=auto",
             "control_restore_best_weights=true", "ema"))}


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")
    rows = []
    for name in FLAGS.workloads:
        workload = dev_workloads.DEV_WORKLOADS[name]
        splits = workload.data(0)
        seconds = {key: [] for key in SPECS}
        for _ in range(FLAGS.reps):
            for key, spec in SPECS.items():
                start = time.perf_counter()
                runner.fit(workload, splits, spec, 0, FLAGS.steps)
                seconds[key].append(time.perf_counter() - start)
        medians = {k: float(np.median(v)) for k, v in seconds.items()}
        print(name, {k: [round(x, 2) for x in v] for k, v in seconds.items()},
              flush=True)
        rows.append([name, FLAGS.steps] + [
            f"{medians[k]:.2f}" for k in SPECS] + [
            f"{medians[k] / medians['alone']:.3f}" for k in SPECS
            if k != "alone"])
    common.print_table(["workload", "steps"] + [
        f"{k} s (median)" for k in SPECS] + [
        f"{k} / alone" for k in SPECS if k != "alone"], rows)


if __name__ == "__main__":
    app.run(main)

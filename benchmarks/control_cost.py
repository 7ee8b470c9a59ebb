"""What `keras_meta.callbacks.ValidationControl` adds to a `fit`'s time.

For each development workload named, the same seeded fit (build, compile,
`--steps` steps, final evaluation: `benchmarks.suite.runner.fit`) with
`LearnedOptimizer(weights="normalized", use_ema=True)` alone and under
`ValidationControl` (the suite's `+control`: a check every 250 steps on
the validation split and as many training examples), interleaved for
`--reps` repetitions in one process; prints each fit's seconds, the
median of each and their ratio.

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
         "control": ("learned", "normalized", ("control", "ema"))}


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
        rows.append([name, FLAGS.steps, f"{medians['alone']:.2f}",
                     f"{medians['control']:.2f}",
                     f"{medians['control'] / medians['alone']:.3f}"])
    common.print_table(["workload", "steps", "alone s (median)",
                        "control s (median)", "ratio"], rows)


if __name__ == "__main__":
    app.run(main)

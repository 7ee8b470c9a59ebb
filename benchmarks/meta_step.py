"""Time of one compiled meta-training truncation, XLA vs TF graph.

For each problem family: first call (trace + compile + run) and the median of
`--reps` later calls of `MetaTrainer.meta_step` (one truncation of `--unroll`
steps with its meta-gradient), with `jit_compile` False and True.

    python -m benchmarks.meta_step --problems=quadratic,mlp_teacher
"""

import time

import numpy as np
from absl import app
from absl import flags

import keras_meta  # noqa: F401
from keras_meta.meta import problems
from keras_meta.meta import trainer

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_list("problems", ["quadratic", "mlp_teacher"], "Families.")
flags.DEFINE_integer("unroll", 20, "Steps per truncation.")
flags.DEFINE_integer("reps", 8, "Timed truncations after the first.")
flags.DEFINE_string("out", "meta_step.json", "JSON file in results/.")


def main(argv):
    del argv
    results, rows = {"unroll": FLAGS.unroll, "families": {}}, []
    for name in FLAGS.problems:
        prob = problems.make_problem(name)
        entry = {}
        for jit in (False, True):
            mt = trainer.MetaTrainer([prob], unroll=FLAGS.unroll,
                                     horizon=FLAGS.unroll * 100,
                                     jit_compile=jit)
            start = time.perf_counter()
            mt.meta_step()
            first = time.perf_counter() - start
            times = []
            for _ in range(FLAGS.reps):
                start = time.perf_counter()
                mt.meta_step()
                times.append(time.perf_counter() - start)
            entry["xla" if jit else "graph"] = {
                "first_call_s": first, "median_s": float(np.median(times)),
                "all_s": times}
            rows.append([name, "XLA" if jit else "graph", f"{first:.1f}",
                         f"{np.median(times) * 1e3:.0f}"])
        results["families"][name] = entry
    common.print_table(["family", "mode", "first call s", "median ms"], rows)
    common.write_json(FLAGS.out, results)


if __name__ == "__main__":
    app.run(main)

"""Ranks phi checkpoints on validation instances of the training families.

Validation instances use seeds (2,000,000+) that neither meta-training nor
the in-training evaluation (1,000,000+) uses, and a horizon of `--steps`
(default 200, twice the training horizon). Score: mean over families of
log10 of the mean final loss. Held-out benchmark problems are not used.

    python -m benchmarks.validate_checkpoints --phi=a.npz,b.npz
"""

import math

import numpy as np
from absl import app
from absl import flags

import keras_meta  # noqa: F401
from keras_meta.meta import baselines
from keras_meta.meta import problems
from keras_meta.meta import trainer
from keras_meta.optimizers import weights_io

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_list("phi", [], "phi files to rank.")
flags.DEFINE_list("problems", ["quadratic", "mlp_teacher", "mlp_omniglot"],
                  "Training families to validate on.")
flags.DEFINE_integer("steps", 200, "Optimizee steps.")
flags.DEFINE_integer("instances", 2, "Validation instances per family.")
flags.DEFINE_string("out", "validate_checkpoints.json", "JSON in results/.")

SEED = 2_000_000


def main(argv):
    del argv
    probs = [problems.make_problem(n) for n in FLAGS.problems]
    results, rows = {}, []
    for path in FLAGS.phi:
        phi, cfg = weights_io.load_phi(path)
        rule = baselines.Learned(phi, cfg)
        per = {}
        for p in probs:
            finals = [trainer.run_rule(rule, p, p.sample(SEED + i), FLAGS.steps,
                                       seed=SEED + i)[-1]
                      for i in range(FLAGS.instances)]
            per[p.name] = trainer.log10_mean(finals)
        score = float(np.mean(list(per.values())))
        if not math.isfinite(score):
            score = float("inf")
        results[path] = {"score": score, "per_family_log10_final": per}
        rows.append([path, f"{score:.3f}"] + [f"{v:.3f}" for v in per.values()])
        print(rows[-1], flush=True)
    common.print_table(["phi", "score"] + [p.name for p in probs], rows)
    common.write_json(FLAGS.out, results)


if __name__ == "__main__":
    app.run(main)

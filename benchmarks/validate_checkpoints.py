"""Ranks phi checkpoints on validation instances of the training families.

Validation instances use seeds (2,000,000+) that neither meta-training nor
the in-training evaluation (1,000,000+) uses, and a horizon of `--steps`
(default 200, twice the training horizon). Score: mean over families of
log10 of the mean final loss. Held-out benchmark problems are not used.

`--setting=fit` instead trains the architectures of the training families
(`--fit_models`: the paper's sigmoid MLP and the narrow (4, 8) convnet) with
`fit` on random-teacher datasets (seeds 100+, not the held-out benchmark's
0-9), as `benchmarks/keras_fit.py` does for the held-out models, and also
reports Adam at its best of `--adam_lrs` there.

`--run_dir=<model_dir>` adds every checkpoint of a training run: the phi of
each `checkpoints/ckpt-N.npz` is written, with the run's rule config, to
`<model_dir>/checkpoint_phis/phi-N.npz` (ready for `LearnedOptimizer(weights=)`)
and ranked with the others.

    python -m benchmarks.validate_checkpoints --phi=a.npz,b.npz
    python -m benchmarks.validate_checkpoints --setting=fit --steps=500 --run_dir=runs/lopt
"""

import math

import numpy as np
from absl import app
from absl import flags

import keras_meta  # noqa: F401
from keras_meta.rules import baselines
from keras_meta.meta import problems
from keras_meta.meta import trainer
from keras_meta.optimizers import weights_io

from benchmarks import common
from examples.learned_optimizer import train as lopt_train

FLAGS = flags.FLAGS
flags.DEFINE_list("phi", [], "phi files to rank.")
flags.DEFINE_list("problems", ["quadratic", "mlp_teacher", "mlp_omniglot"],
                  "Training families to validate on.")
flags.DEFINE_integer("steps", 200, "Optimizee steps.")
flags.DEFINE_integer("instances", 2, "Validation instances per family.")
flags.DEFINE_string("out", "validate_checkpoints.json", "JSON in results/.")
flags.DEFINE_string("run_dir", None, "Also rank every checkpoint of this "
                    "examples/train_learned_optimizer.py --model_dir.")
flags.DEFINE_enum("setting", "unroll", ["unroll", "fit"],
                  "unroll: the families' functional problems; fit: Keras "
                  "fit on teacher datasets.")
flags.DEFINE_list("fit_models", ["mlp_sigmoid", "conv_small"],
                  "--setting=fit: keys of benchmarks.fit_lib.MODELS.")
flags.DEFINE_list("adam_lrs", ["3e-3", "1e-2", "3e-2"],
                  "--setting=fit: Adam reference grid.")

SEED = 2_000_000


def main_fit():
    import keras
    import keras_meta
    from benchmarks import fit_lib

    data = {s: fit_lib.dataset(s, 8192) for s in range(100, 100 + FLAGS.instances)}

    def mean_final(name, make_opt):
        return float(np.mean([fit_lib.train(name, make_opt, s, x, y,
                                            steps=FLAGS.steps)
                              for s, (x, y) in data.items()]))

    results, rows = {"adam": {}}, []
    for name in FLAGS.fit_models:
        per_lr = {lr: mean_final(name, lambda: keras.optimizers.Adam(float(lr)))
                  for lr in FLAGS.adam_lrs}
        best = min(per_lr, key=per_lr.get)
        results["adam"][name] = {"per_lr": per_lr, "best_lr": best}
        print(f"{name}: Adam {per_lr}", flush=True)
    rows.append(["adam (best grid lr)", "", ""] + [
        f"{math.log10(min(results['adam'][n]['per_lr'].values())):.3f}"
        for n in FLAGS.fit_models])
    for path in FLAGS.phi:
        per = {n: math.log10(mean_final(
            n, lambda: keras_meta.LearnedOptimizer(weights=path)))
            for n in FLAGS.fit_models}
        score = float(np.mean(list(per.values())))
        # Worst over models of final loss / Adam's at its best grid rate.
        worst = max(10 ** v / min(results["adam"][n]["per_lr"].values())
                    for n, v in per.items())
        results[path] = {"score": score, "worst_ratio_to_adam": worst,
                         "per_model_log10_final": per}
        rows.append([path, f"{score:.3f}", f"{worst:.3f}"] +
                    [f"{v:.3f}" for v in per.values()])
        print(rows[-1], flush=True)
    common.print_table(["phi", "score", "worst ratio to Adam"] +
                       list(FLAGS.fit_models), rows)
    common.write_json(FLAGS.out, results)


def main(argv):
    del argv
    if FLAGS.run_dir:
        FLAGS.phi = (list(FLAGS.phi) +
                     lopt_train.checkpoint_phis(FLAGS.run_dir))
    if FLAGS.setting == "fit":
        return main_fit()
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

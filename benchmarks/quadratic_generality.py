"""Quadratic specialists on quadratic shapes and scales they never saw.

Each setting is a family of 128 x `dims` quadratics (the paper's with other
dimensions, or with W scaled, i.e. curvature times scale^2), 20 problems
with seeds 3,000,000+ (neither meta-training, validation nor the benchmark
uses them). Reported: log10 of the mean loss after `--steps` steps of each
learned rule, untuned, against Adam (learning rate tuned per setting) and
heavy-ball momentum (rate and momentum tuned per setting).

    python -m benchmarks.quadratic_generality --weights=quadratic,coordinatewise
"""

import math

import numpy as np
from absl import app
from absl import flags

import keras_meta  # noqa: F401
from keras_meta.meta import problems
from keras_meta.meta import trainer
from keras_meta.optimizers import weights_io
from keras_meta.rules import baselines

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_list("weights", ["quadratic"], "Shipped weights names or phi "
                  "files to compare.")
flags.DEFINE_list("settings", ["10x1", "5x1", "20x1", "10x0.3", "10x3"],
                  "dims x W-scale of each setting.")
flags.DEFINE_integer("num_problems", 20, "Problems per setting.")
flags.DEFINE_integer("steps", 100, "Optimizer steps.")
flags.DEFINE_list("lr_grid", [f"{10 ** (e / 4):.4g}" for e in range(-12, 5)],
                  "Learning rates tried for the baselines.")
flags.DEFINE_list("momentum_grid", ["0.9", "0.93"], "Heavy-ball momenta.")
flags.DEFINE_string("out", "quadratic_generality.json", "JSON in results/.")


def _log10_final(rule, prob, inst):
    final = trainer.run_rule(rule, prob, inst, FLAGS.steps)[-1]
    final /= prob.num_problems
    return math.log10(final) if np.isfinite(final) and final > 0 else math.nan


def _best(rules, prob, inst):
    scores = {name: _log10_final(rule, prob, inst) for name, rule in rules}
    finite = {k: v for k, v in scores.items() if np.isfinite(v)}
    key = min(finite, key=finite.get)
    return {"log10_loss": finite[key], "setting": key}


def main(argv):
    del argv
    lrs = [float(x) for x in FLAGS.lr_grid]
    results, rows = {}, []
    for setting in FLAGS.settings:
        dims, scale = setting.split("x")
        dims, scale = int(dims), float(scale)
        prob = problems.QuadraticProblem(num_dims=dims,
                                         num_problems=FLAGS.num_problems,
                                         split=True)
        inst = prob.sample(3_000_000 + dims)
        w, y = inst.task
        inst = inst._replace(task=(w * scale, y))
        entry = {}
        for name in FLAGS.weights:
            phi, cfg = weights_io.load_phi(
                weights_io.pretrained_path(name)
                if name in weights_io.PRETRAINED else name)
            entry[name] = _log10_final(baselines.Learned(phi, cfg), prob, inst)
        entry["adam"] = _best(
            [(f"lr {lr:.3g}", baselines.Adam(lr)) for lr in lrs], prob, inst)
        entry["heavy_ball"] = _best(
            [(f"lr {lr:.3g}, momentum {m}", baselines.make_baseline(
                "heavy_ball", lr, float(m)))
             for lr in lrs for m in FLAGS.momentum_grid], prob, inst)
        results[setting] = entry
        rows.append([f"128 x {dims}, W x {scale:g}"]
                    + [f"{entry[n]:.3f}" for n in FLAGS.weights]
                    + [f"{entry[b]['log10_loss']:.3f} ({entry[b]['setting']})"
                       for b in ("adam", "heavy_ball")])
    common.print_table(["problems"] + FLAGS.weights
                       + ["Adam (tuned)", "heavy ball (tuned)"], rows)
    common.write_json(FLAGS.out, {"steps": FLAGS.steps,
                                  "num_problems": FLAGS.num_problems,
                                  "settings": results})


if __name__ == "__main__":
    app.run(main)

"""Quadratic benchmark: learned optimizer vs LR-tuned SGD, NAG, RMSProp, Adam.

Also heavy-ball momentum with both its learning rate and its momentum tuned
(`heavy_ball`; the untrained `descent="momentum"` rule is a heavy ball).

log10 of the mean final loss over held-out quadratics (the paper's
f(x) = mean_b ||W_b x - y_b||^2, 128 x 10) after 100 and 200 steps. Every
baseline's learning rate is tuned on the same problems, separately for each
horizon. Problems are stacked so each coordinate sees its own problem's
gradient (`QuadraticProblem(num_problems=N)`).

    python benchmarks/quadratic.py --num_problems=100
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
flags.DEFINE_integer("num_problems", 100, "Held-out problems.")
flags.DEFINE_integer("seed", 20240, "Seed of the held-out problems.")
flags.DEFINE_list("steps", ["100", "200"], "Horizons to report.")
flags.DEFINE_string("weights", None, "Shipped weights name or phi file "
                    "(default: the shipped default).")
flags.DEFINE_list("baselines", ["sgd", "nag", "rmsprop", "adam", "heavy_ball"],
                  "Baselines.")
flags.DEFINE_list("momentum_grid", ["0.8", "0.9", "0.93", "0.95", "0.97"],
                  "Momenta tried for heavy_ball (with every grid rate).")
flags.DEFINE_list("lr_grid", [f"{10 ** (e / 4):.4g}" for e in range(-16, 5)],
                  "Learning-rate grid (default 1e-4 .. 10, 4 per decade).")
flags.DEFINE_string("out", "quadratic.json", "JSON file in results/.")


def mean_curve(rule, prob, inst, steps):
    losses = trainer.run_rule(rule, prob, inst, steps)
    return losses / prob.num_problems  # mean over problems


def log10_at(curve, t):
    v = curve[t]
    return math.log10(v) if np.isfinite(v) and v > 0 else float("nan")


def main(argv):
    del argv
    steps = sorted(int(s) for s in FLAGS.steps)
    prob = problems.QuadraticProblem(num_problems=FLAGS.num_problems)
    inst = prob.sample(FLAGS.seed)
    weights = FLAGS.weights or weights_io.DEFAULT_PRETRAINED
    phi, cfg = weights_io.load_phi(
        weights_io.pretrained_path(weights)
        if weights in weights_io.PRETRAINED else weights)
    results = {"num_problems": FLAGS.num_problems, "seed": FLAGS.seed,
               "weights": FLAGS.weights or "shipped", "steps": steps}
    if cfg.granularity == "tensor" or cfg.descent == "momentum":
        # Each problem is its own tensor, as it would be alone (these rules
        # read statistics of the whole tensor).
        split = problems.QuadraticProblem(num_problems=FLAGS.num_problems,
                                          split=True)
        learned = mean_curve(baselines.Learned(phi, cfg), split,
                             split.sample(FLAGS.seed), max(steps))
    else:
        learned = mean_curve(baselines.Learned(phi, cfg), prob, inst,
                             max(steps))
    results["learned"] = {str(t): log10_at(learned, t) for t in steps}
    results["learned_curve_log10"] = [
        math.log10(v) if v > 0 and np.isfinite(v) else None
        for v in learned]
    for name in FLAGS.baselines:
        per_lr = {}
        momenta = ([float(m) for m in FLAGS.momentum_grid]
                   if name == "heavy_ball" else [0.9])
        for lr in (float(x) for x in FLAGS.lr_grid):
            for mom in momenta:
                curve = mean_curve(baselines.make_baseline(name, lr, mom),
                                   prob, inst, max(steps))
                key = (lr, mom) if name == "heavy_ball" else lr
                per_lr[key] = {str(t): log10_at(curve, t) for t in steps}
        best = {}
        for t in steps:
            finite = {lr: r[str(t)] for lr, r in per_lr.items()
                      if np.isfinite(r[str(t)])}
            key = min(finite, key=finite.get)
            best[str(t)] = {"log10_loss": finite[key],
                            **({"lr": key[0], "momentum": key[1]}
                               if name == "heavy_ball" else {"lr": key})}
        results[name] = {"best": best,
                         "grid": {str(k): v for k, v in per_lr.items()}}
    rows = [["learned (no tuning)"] + [f"{results['learned'][str(t)]:.3f}"
                                       for t in steps]]
    for name in FLAGS.baselines:
        rows.append([f"{name} (tuned)"] + [
            f"{results[name]['best'][str(t)]['log10_loss']:.3f} "
            f"(lr {results[name]['best'][str(t)]['lr']:.3g}"
            + (f", momentum {results[name]['best'][str(t)]['momentum']:.3g}"
               if name == "heavy_ball" else "") + ")" for t in steps])
    common.print_table(["optimizer"] + [f"log10 loss @{t}" for t in steps],
                       rows)
    results["goals"] = {"100": -1.30, "200": -1.45}
    common.write_json(FLAGS.out, results)


if __name__ == "__main__":
    app.run(main)

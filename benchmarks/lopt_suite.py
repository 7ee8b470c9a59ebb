"""Held-out realistic workloads in `model.fit`: LearnedOptimizer vs Adam.

Seven small workloads the learned optimizer never saw in meta-training,
each trained from scratch with ordinary `model.compile(optimizer=...)` and
`model.fit` for each of `--steps` steps (batch size fixed per workload),
from each of `--seeds` seeds; the numbers are the final TEST loss and
metric (`model.evaluate` on a held-out test set):

- `omniglot_bn_conv`: conv-BN-ReLU convnet classifying the 59 characters
  of the held-out Omniglot alphabets (Sanskrit, Tagalog; meta-training may
  use the others) at 28x28; each character's 20 drawings are split in
  archive order into 12 train / 4 validation / 4 test (accuracy). Read
  from `../shared/data/omniglot`; skipped with a message where absent.
- `omniglot_autoencoder`: dense autoencoder (196-128-32-128-196) of the
  same held-out drawings at 14x14, MSE (MAE).
- `embedding_text`: `Embedding` + mean-pooling text classifier on
  synthetic topic/Zipf token documents; its embedding gradients are
  `tf.IndexedSlices` (accuracy).
- `transformer`: one `MultiHeadAttention` encoder block counting how often
  the first token recurs in a random sequence (accuracy).
- `gru`: GRU(32) telling 5 close frequencies of noisy sinusoids apart
  (accuracy).
- `resnet_bn`: residual convnet with batch norm on noisy 16x16 shapes
  (accuracy).
- `regression_mlp`: 16-128-128-1 ReLU MLP on a smooth random function plus
  noise, MSE (MAE).

Every training set is finite and small enough to overfit within 5,000
steps; the synthetic sets are drawn from the run's seed, which also sets
the initialization and the shuffling.

Optimizers (`--optimizers`), all in the same run:
- `adam_best`: Adam at the best of the rates 3e-4, 1e-3, 3e-3, 1e-2,
  3e-2; `adamw_best`: AdamW(weight_decay=1e-2) likewise. Rule: per
  workload and step count, the rate with the lowest mean final
  VALIDATION loss over seeds (rates with a non-finite run excluded) is
  chosen, and its TEST loss is reported; nothing is selected on test data.
- `adam_1e-3`: Adam(1e-3), untuned (the grid's run when both are asked).
- `adam_1e-3_ema_control`: Adam(1e-3, use_ema=True) under
  `keras_meta.callbacks.ValidationControl` (the validation split and as
  many training examples) with the suite's `+control` arguments
  (`runner.CONTROL_DEFAULTS`): the peer of a learned `+control` row,
  counted against the goals as they are;
  `adam_1e-3_ema_control_default` the same with the callback's defaults.
- `adam_fixed`: one `adam_fixed[<rate>]` row per grid rate, each rate
  used on every workload (the grid's runs), counted against the goals as
  the learned rows are: what one untuned Adam rate would score.
- `learned`: `keras_meta.LearnedOptimizer()` (the shipped default), plus
  one `learned[<w>]` per `--weights` name or file, untuned; suffixes
  `+ema` (`use_ema=True`), `+none` and `+field=value` (rule options of
  `init_normalized`), `+ablate=parameter_feature` / `+ablate=mlp` (a
  normalized rule without its parameter feature / with its MLP's output
  zeroed: which part of a rule helps or hurts on a workload),
  `+mlp_scale=S` (its MLP's output times S, 0 <= S <= 1),
  `+parameter_feature_scale=S` (its parameter feature, the learned weight
  decay's input, times S),
  `+mlp_tensors=matrices`, `+decay_power=P`, `+decay_start=T`,
  `+dense_table_decay=false` (those untrained fields of a normalized rule's config set on a trained file),
  `+control` (trained under `keras_meta.callbacks.ValidationControl`,
  reading the validation split and as many training examples: the rule
  steered by held-out loss; Adam-best reads the same split to choose its
  rate) with the learned decay halved, not turned off
  (`runner.CONTROL_DEFAULTS`), `+control_<argument>=value` (another
  argument of the callback, e.g. `+control_decay_factor=0`, its default).

Output: one table (per workload, step count and optimizer: test loss mean
± sd over seeds, its ratio to `adam_best`, test metric mean, non-finite
runs / runs) and benchmarks/results/<--out> with every run's numbers
(train/validation/test loss and metric, seconds), the summaries and the
goal counts of issue 22.

    python -m benchmarks.lopt_suite --steps=1000,5000 --seeds=3

`--reuse=a.json,b.json` copies every run (workload, steps, seed,
optimizer spec) found in earlier results instead of training it again:
try a new candidate against an Adam grid trained once, or join a run
made in parts. It copies only runs of the same `--workload_set`.

`--workload_set=dev` trains the development workloads
(`suite/dev_workloads.py`), where candidates are chosen;
`--workload_set=report` the report workloads
(`suite/report_workloads.py`), a third set never used to choose
anything, whose numbers are reported as they come.

Cost: 11 fits per workload, step count and seed with the default
optimizers (5 Adam + 5 AdamW rates + the learned default); a 1,000-step
fit takes 4-30 s on 2 CPU cores (the learned optimizer's 10-50 s, most of
it tracing). Measured on 2 CPU cores shared with other jobs (load about
9): the whole default run at `--steps=1000 --seeds=3` (231 fits) took
60 min of wall time (23 min of CPU); at `--steps=5000 --seeds=3`,
`regression_mlp,embedding_text` took 16 min and
`omniglot_autoencoder,gru` 38 min.
"""

import time

import tensorflow as tf
from absl import app
from absl import flags

from benchmarks import common
from benchmarks.suite import data as suite_data
from benchmarks.suite import dev_workloads
from benchmarks.suite import report
from benchmarks.suite import report_workloads
from benchmarks.suite import runner
from benchmarks.suite import workloads

FLAGS = flags.FLAGS
flags.DEFINE_enum("workload_set", "held_out", ["held_out", "dev", "report"],
                  "held_out: the suite (report on it); dev: "
                  "suite/dev_workloads.py (choose candidates on it); "
                  "report: suite/report_workloads.py, never used to choose "
                  "candidates (its numbers are reported as they come).")
flags.DEFINE_list("workloads", [], "Workloads of the set (default all).")
flags.DEFINE_list("steps", ["1000", "5000"], "Training steps (each).")
flags.DEFINE_integer("seeds", 3, "Seeds 0..seeds-1 per workload.")
flags.DEFINE_list("optimizers", ["adam_best", "adamw_best", "adam_1e-3",
                                 "learned"], "Optimizers (see docstring).")
flags.DEFINE_list("weights", [], "More LearnedOptimizer weights: shipped "
                  "names or phi files, one `learned[<w>]` row each; a "
                  "suffix `+ema` adds use_ema=True, `+none` the rule "
                  "option normalize='none' (with init_normalized), "
                  "`+ablate=parameter_feature|mlp` removes a part of a "
                  "normalized rule, `+mlp_scale=S` scales its MLP's output, "
                  "`+decay_power=P` etc. set untrained config fields "
                  "(see docstring).")
flags.DEFINE_string("out", "lopt_suite.json", "JSON file in results/.")
flags.DEFINE_list("reuse", [], "JSON files in results/ of earlier runs of "
                  "this command: a run (workload, steps, seed, optimizer "
                  "spec) found in one is copied instead of trained again, "
                  "e.g. the Adam grid while trying new candidates.")

ADAM_RATES = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
ADAMW_DECAY = 1e-2
OPTIMIZER_NAMES = ("adam_best", "adamw_best", "adam_1e-3", "adam_1e-3_ema",
                   "adam_1e-3_ema_control", "adam_1e-3_ema_control_default",
                   "adam_fixed", "learned")
WORKLOAD_SETS = {"held_out": workloads.WORKLOADS,
                 "dev": dev_workloads.DEV_WORKLOADS,
                 "report": report_workloads.REPORT_WORKLOADS}


def spec_key(spec):
    """A readable, unique name of an optimizer spec (JSON keys)."""
    return " ".join("default" if s is None else f"{s:g}"
                    if isinstance(s, float) else str(s) for s in spec)


def optimizer_groups(names, weights):
    """({optimizer name: group for `report.summarize`}, {key: spec})."""
    unknown = sorted(set(names) - set(OPTIMIZER_NAMES))
    if unknown:
        raise ValueError(f"Unknown --optimizers {unknown}; "
                         f"known: {list(OPTIMIZER_NAMES)}.")
    groups, specs = {}, {}

    def add(spec):
        specs[spec_key(spec)] = spec
        return spec_key(spec)
    if "adam_best" in names:
        groups["adam_best"] = ("grid", {r: add(("adam", r))
                                        for r in ADAM_RATES})
    if "adamw_best" in names:
        groups["adamw_best"] = ("grid", {r: add(("adamw", r, ADAMW_DECAY))
                                         for r in ADAM_RATES})
    if "adam_1e-3" in names:
        groups["adam_1e-3"] = ("single", add(("adam", 1e-3)))
    if "adam_fixed" in names:
        for r in ADAM_RATES:
            groups[f"adam_fixed[{r:g}]"] = ("single", add(("adam", r)))
    if "adam_1e-3_ema" in names:
        groups["adam_1e-3_ema"] = ("single", add(("adam_ema", 1e-3)))
    if "adam_1e-3_ema_control" in names:
        groups["adam_1e-3_ema_control"] = ("single", add(
            ("adam_ema", 1e-3, "control")))
    if "adam_1e-3_ema_control_default" in names:
        groups["adam_1e-3_ema_control_default"] = ("single", add(
            ("adam_ema", 1e-3, "control_default")))
    if "learned" in names:
        groups["learned"] = ("single", add(("learned", None)))
    for w in weights:
        groups[f"learned[{w}]"] = ("single", add(runner.learned_spec(w)))
    return groups, specs


def reusable_runs(paths, workload_set):
    """{(workload, steps, spec key, seed): run} from earlier results."""
    found = {}
    for path in paths:
        previous = common.read_json(path)
        # Records older than --workload_set are of the held-out suite.
        held = previous.get("workload_set", "held_out")
        if held != workload_set:
            raise ValueError(f"--reuse={path} holds the {held!r} workload "
                             f"set, not {workload_set!r}.")
        for name, by_steps in previous["cells"].items():
            for steps, cell in by_steps.items():
                for key, runs in cell["runs"].items():
                    for seed, run in enumerate(runs):
                        found[(name, int(steps), key, seed)] = run
    return found


def run_cell(workload, name, steps, seeds, specs, reuse=None):
    """Every spec on every seed of one workload; {spec key: [runs]}.
    Runs found in `reuse` (`reusable_runs`) are copied, not trained."""
    reuse = reuse or {}
    runs = {key: [] for key in specs}
    for seed in range(seeds):
        splits = None
        for key, spec in specs.items():
            if (name, steps, key, seed) in reuse:
                runs[key].append(reuse[(name, steps, key, seed)])
                continue
            splits = splits or workload.data(seed)
            result = runner.fit(workload, splits, spec, seed, steps)
            runs[key].append(result)
            print(f"  {name} {steps} seed {seed} {key}: test loss "
                  f"{result['test_loss']} ({result['seconds']:.1f} s)",
                  flush=True)
    return runs


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")
    start = time.perf_counter()
    groups, specs = optimizer_groups(FLAGS.optimizers, FLAGS.weights)
    table = WORKLOAD_SETS[FLAGS.workload_set]
    names = FLAGS.workloads or list(table)
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise ValueError(f"Unknown --workloads {unknown} in the "
                         f"{FLAGS.workload_set} set; known: {list(table)}.")
    # The rows counted against issue 22's goals.
    learned = [g for g in groups if g.startswith(
        ("learned", "adam_fixed", "adam_1e-3_ema_control"))]
    reuse = reusable_runs(FLAGS.reuse, FLAGS.workload_set)
    results = {"steps": [int(s) for s in FLAGS.steps], "seeds": FLAGS.seeds,
               "workload_set": FLAGS.workload_set,
               "optimizers": list(groups), "adam_rates": ADAM_RATES,
               "adamw_weight_decay": ADAMW_DECAY, "skipped": {},
               "cells": {}}
    summaries, rows = {}, []
    for steps in results["steps"]:
        for name in names:
            cell_start = time.perf_counter()
            try:
                runs = run_cell(table[name], name, steps, FLAGS.seeds, specs,
                                reuse)
            except suite_data.DataUnavailable as e:
                print(f"Skipping {name}: {e}", flush=True)
                results["skipped"][name] = str(e)
                continue
            summary = report.summarize(
                runs, groups, table[name].metric)
            summaries[(name, steps)] = summary
            rows += report.table_rows(name, steps, summary)
            results["cells"].setdefault(name, {})[str(steps)] = {
                "summary": summary, "runs": runs,
                "metric": table[name].metric,
                "wall_s": time.perf_counter() - cell_start}
            common.print_table(report.TABLE_HEADER,
                               report.table_rows(name, steps, summary))
            results["goals"] = report.goal_counts(summaries, learned)
            results["wall_s"] = time.perf_counter() - start
            common.write_json(FLAGS.out, results)
    print()
    common.print_table(report.TABLE_HEADER, rows)
    print("goal counts:", results.get("goals"))
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)

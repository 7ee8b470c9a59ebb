"""Saved sinusoid MAML models evaluated with and without the inner guard.

For each `.keras` model and each guard factor, the 5-shot query MSE on
1,000 held-out sinusoid tasks after 1, 5 and 10 inner steps (mean +- 95%
CI and the divergence counts of `keras_meta.evaluation`), and how many
tasks the guard stopped (an undone step leaves a zero inner-update norm).
The tasks are the training script's test tasks (`--eval_shots=5`), made
after `keras.utils.set_random_seed(--global_seed)`: their stream depends
on the global seed, which the script sets to its `--seed`.

    python -m benchmarks.inner_guard --models=runs/meta_sgd/model.keras --guards=none,2
"""

import time

import keras
import numpy as np
from absl import app
from absl import flags

import keras_meta
from keras_meta import evaluation

from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_list("models", [], "Saved sinusoid MAML `.keras` files.")
flags.DEFINE_list("guards", ["none", "2"],
                  "Guard factors: `none` (off) or a float (`inf` too).")
flags.DEFINE_integer("global_seed", 0, "The training run's --seed.")
flags.DEFINE_string("out", "inner_guard.json", "JSON file in results/.")

STEPS = (1, 5, 10)
TASKS, BATCH = 1000, 250


def episodes():
    """The training script's 5-shot test tasks (examples/maml/tasks.py)."""
    keras.utils.set_random_seed(FLAGS.global_seed)
    return keras_meta.data.sinusoid(shots=5, queries=100,
                                    meta_batch_size=BATCH, seed=10_000)


def stopped_tasks(maml):
    """Tasks with an undone inner step within 10 steps."""
    norms = np.concatenate([
        maml.inner_update_norms(batch, steps=max(STEPS)).numpy()
        for batch in episodes().take(TASKS // BATCH)])
    return int((norms == 0).any(axis=1).sum())


def evaluate(path, guard):
    maml = keras.models.load_model(path)
    maml.inner_guard = guard
    start = time.time()
    losses = evaluation.adaptation_results(
        maml, episodes(), TASKS, max(STEPS))["losses"]
    row = {"model": path, "guard": guard, "seconds": time.time() - start}
    for s in STEPS:
        mean, ci = evaluation.mean_confidence_interval(losses[:, s])
        row[f"steps_{s}"] = {"mean": mean, "ci95": ci, "diverged":
                             evaluation.divergence_counts(losses[:, s])}
    row["stopped"] = stopped_tasks(maml) if guard is not None else 0
    return row


def _cell(result):
    """`mean +- ci` and the diverged counts (non-finite / above 1e3)."""
    d = result["diverged"]
    return (f"{result['mean']:.3f} +- {result['ci95']:.3f} "
            f"({d['non_finite']} / {d['above_1e3']})")


def main(argv):
    del argv
    if not FLAGS.models:
        raise app.UsageError("--models: give at least one .keras file.")
    guards = [None if g == "none" else float(g) for g in FLAGS.guards]
    rows = [evaluate(path, guard) for path in FLAGS.models
            for guard in guards]
    table = [[r["model"], str(r["guard"])] + [
        _cell(r[f"steps_{s}"]) for s in STEPS] + [r["stopped"]]
        for r in rows]
    common.print_table(["model", "guard"] + [f"{s} steps" for s in STEPS]
                       + ["stopped"], table)
    common.write_json(FLAGS.out, {"rows": rows})


if __name__ == "__main__":
    app.run(main)

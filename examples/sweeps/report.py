"""Sweep outputs: the HParams plugin summaries and the summary table.

Layout under the sweep directory:

    <sweep_dir>/events.out...        hparams_config: the hparams and metrics
    <sweep_dir>/trials/<id>/         one HParams session per trial: its
        events.out...                hparams, end status and final scalars
        trial.json                   the trial's record
        model/                       the trial's --model_dir
    <sweep_dir>/summary.csv, summary.json
"""

import csv
import math
import os
import time

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import summary as hp_summary

from keras_meta import saving

from examples.sweeps import goals

FINAL_TAG = "sweep/final_metric"
PROGRESS_TAG = "sweep/best_progress"
STEPS_TAG = "sweep/steps"
STATUS_ORDER = ("completed", "stopped", "diverged", "failed")


def _domain(axis):
    if axis.discrete:
        return hp.Discrete(list(axis.values))
    if axis.distribution == "randint":
        return hp.IntInterval(axis.low, axis.high)
    return hp.RealInterval(float(axis.low), float(axis.high))


def write_hparams_config(sweep_dir, axes, seeds, metric, goal, progress_tag,
                         progress_group):
    """Declares the hparams (plus `seed`, one of `seeds`) and the metrics at
    the sweep root, for the HParams dashboard's table, parallel-coordinates
    and scatter views. Metrics: the final held-out metric, the best progress
    value and the steps trained (written by the sweep), and the trial's own
    progress curve (written by the trial)."""
    hparams = [hp.HParam(a.name, _domain(a)) for a in axes]
    hparams.append(hp.HParam("seed", hp.Discrete(sorted(set(seeds)))))
    metrics = [
        hp.Metric(FINAL_TAG, display_name=f"{metric} ({goal})"),
        hp.Metric(PROGRESS_TAG, display_name=f"best {progress_tag}"),
        hp.Metric(STEPS_TAG, display_name="steps trained"),
        hp.Metric(progress_tag, group=progress_group or None,
                  display_name=progress_tag),
    ]
    with tf.summary.create_file_writer(sweep_dir).as_default():
        hp.hparams_config(hparams=hparams, metrics=metrics)


def write_session_start(session_dir, hparams, seed, trial):
    """The trial's hparams, so the dashboard lists it while it runs."""
    with tf.summary.create_file_writer(session_dir).as_default():
        hp.hparams(dict(hparams, seed=seed), trial_id=trial)


def write_session_end(session_dir, record):
    """The trial's end status and its final scalars."""
    status = (api_pb2.STATUS_SUCCESS if record["status"] == "completed"
              else api_pb2.STATUS_FAILURE)
    step = int(record.get("steps") or 0)
    with tf.summary.create_file_writer(session_dir).as_default():
        tf.summary.experimental.write_raw_pb(
            hp_summary.session_end_pb(status).SerializeToString(), step=step)
        for tag, key in ((FINAL_TAG, "metric"), (PROGRESS_TAG, "progress")):
            if goals.is_finite(record.get(key)):
                tf.summary.scalar(tag, float(record[key]), step=step)
        tf.summary.scalar(STEPS_TAG, step, step=step)


def _rank_key(record, goal, progress_goal):
    status = STATUS_ORDER.index(record["status"])
    if record["status"] == "completed":
        return (status, goals.sort_key(record.get("metric"), goal))
    return (status, goals.sort_key(record.get("progress"), progress_goal))


def summary_rows(records, names, goal, progress_goal):
    """Records as flat rows, best first: completed trials by metric, then
    stopped ones by progress, then diverged and failed ones."""
    rows = []
    ordered = sorted(records, key=lambda r: _rank_key(r, goal, progress_goal))
    for rank, record in enumerate(ordered, start=1):
        row = {"rank": rank, "trial": record["trial"],
               "status": record["status"]}
        row.update({n: record["hparams"].get(n) for n in names})
        row.update(seed=record["seed"], metric=record.get("metric"),
                   progress=record.get("progress"), steps=record.get("steps"),
                   seconds=round(record.get("seconds") or 0.0, 1),
                   note=record.get("note", ""))
        rows.append(row)
    return rows


def _cell(value):
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return "" if value is None else str(value)


def format_table(rows, metric):
    """Rows as a Markdown table (the note column cut to 60 characters)."""
    if not rows:
        return "(no trials)"
    keys = list(rows[0])
    header = [metric if k == "metric" else k for k in keys]
    lines = ["| " + " | ".join(header) + " |",
             "|" + " --- |" * len(keys)]
    for row in rows:
        cells = [_cell(row[k]) for k in keys]
        cells[-1] = cells[-1].replace("\n", " ")[:60]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _json_safe(value):
    """NaN and infinities as strings: strict JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_summary(sweep_dir, rows, info):
    """Writes summary.csv (the rows) and summary.json (`info` + rows),
    each atomically."""

    def write_csv(temporary):
        with open(temporary, "w", newline="") as f:
            if rows:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)

    saving.replace_atomically(os.path.join(sweep_dir, "summary.csv"),
                              write_csv)
    payload = dict(info, trials=[{k: _json_safe(v) for k, v in r.items()}
                                 for r in rows],
                   written=time.strftime("%Y-%m-%d %H:%M:%S"))
    saving.write_json(os.path.join(sweep_dir, "summary.json"), payload)

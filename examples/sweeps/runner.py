"""Runs a sweep: one child process per trial, a few at a time.

`run_sweep(SweepConfig(...))` checks the spec against the target
application's flags (`plan.make_plan`) before launching anything, then
runs each trial as `python <script> --<hparam>=<value> ... --seed=S
--model_dir=<dir> --<budget_flag>=N <pass-through flags>`, polls the children, stops clearly
bad ones (median rule), records every trial in `trials/<id>/trial.json`
(completed, stopped, diverged or failed: a failure never stops the sweep),
logs HParams summaries, and writes summary.csv / summary.json best first.
Restarted with the same settings, it skips trials already finished. One
sweep at a time owns the sweep directory (`keras_meta.run_dir`).

Example:
    >>> config = SweepConfig(  # from examples.sweeps.config
    ...     target="train_maml", sweep="inner_lr=0.01,0.1",
    ...     budget_steps=2000, sweep_dir="runs/sweep")
    >>> summary = run_sweep(config)  # doctest: +SKIP
"""

import dataclasses
import json
import os
import shutil
import subprocess
import time

from keras_meta import run_dir
from keras_meta import saving

from examples.sweeps import goals
from examples.sweeps import plan as plan_lib
from examples.sweeps import report
from examples.sweeps import spec as spec_lib
from examples.sweeps import stopping
from examples.sweeps import targets as targets_lib

FINISHED = ("completed", "stopped", "diverged", "failed")


def default_parallel(cpus=None):
    """Trials at a time: half the CPU cores (a TensorFlow child uses two
    threads well), at least 1."""
    return max(1, (cpus or os.cpu_count() or 1) // 2)


def child_env(parallel, cpus=None):
    """The environment of a child: this package first on PYTHONPATH, quiet
    TensorFlow logs, and the cores shared among the parallel trials."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [targets_lib.ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    threads = str(max(1, (cpus or os.cpu_count() or 1) // parallel))
    env.setdefault("TF_NUM_INTRAOP_THREADS", threads)
    env.setdefault("TF_NUM_INTEROP_THREADS", threads)
    return env


def record_path(sweep_dir, trial):
    return os.path.join(sweep_dir, "trials", trial, "trial.json")


def load_record(sweep_dir, trial):
    """The trial's record, or None if it has not finished."""
    path = record_path(sweep_dir, trial)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    return record if record.get("status") in FINISHED else None


def save_record(sweep_dir, record):
    """Writes the trial's record, atomically."""
    saving.write_json(record_path(sweep_dir, record["trial"]), record)


def tail(path, lines=20):
    """The last `lines` lines of a text file ('' if absent)."""
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def last_error_line(text):
    """The most telling line of a stderr tail: the last non-empty one."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def classify(returncode, metrics, metric, result_file):
    """(status, value, note) of a trial whose process has exited."""
    if returncode != 0:
        return "failed", None, f"exit code {returncode}"
    if metrics is None:
        return "failed", None, f"no {result_file} written"
    if metric not in metrics:
        return "failed", None, (f"metric {metric!r} not in {result_file}; "
                                f"it has {sorted(metrics)}")
    value = metrics[metric]
    if not goals.is_finite(value):
        return "diverged", float(value), f"{metric} is {value}"
    return "completed", float(value), ""


class _Running:
    """A child process and its files."""

    def __init__(self, config, plan, trial, sweep_dir):
        self.trial = trial
        self.session_dir = os.path.join(sweep_dir, "trials", trial.trial)
        self.model_dir = os.path.join(self.session_dir, "model")
        if os.path.exists(self.session_dir):  # Interrupted before: redo.
            shutil.rmtree(self.session_dir)
        os.makedirs(self.session_dir)
        report.write_session_start(self.session_dir, trial.hparams,
                                   trial.seed, trial.trial)
        self.cmd = plan_lib.command(config, plan, trial, self.model_dir)
        self.stdout = open(os.path.join(self.session_dir, "stdout.log"), "w")
        self.stderr = open(os.path.join(self.session_dir, "stderr.log"), "w")
        self.start = time.time()
        parallel = config.parallel or default_parallel()
        self.proc = subprocess.Popen(
            self.cmd, stdout=self.stdout, stderr=self.stderr,
            env=child_env(parallel), start_new_session=True)
        self.curve = []

    def stop(self, grace_seconds=60):
        """SIGTERM, then SIGKILL if it has not exited after the grace."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.close()

    def close(self):
        self.stdout.close()
        self.stderr.close()

    def record(self, status, metric, note, metric_name, progress_goal,
               steps, stopped_by=None):
        stderr = tail(os.path.join(self.session_dir, "stderr.log"))
        if status == "failed" and stderr:
            note = f"{note}: {last_error_line(stderr)}"
        return dict(
            trial=self.trial.trial, hparams=self.trial.hparams,
            seed=self.trial.seed, status=status, metric_name=metric_name,
            metric=metric,
            progress=stopping.best_so_far(self.curve, float("inf"),
                                          progress_goal),
            curve=self.curve, steps=steps, stopped_by=stopped_by,
            seconds=time.time() - self.start, returncode=self.proc.returncode,
            note=note, command=self.cmd,
            stderr_tail=stderr if status != "completed" else "")


def _describe(trial):
    items = [f"{k}={spec_lib.format_value(v)}" for k, v in
             trial.hparams.items()]
    return " ".join(items + [f"seed={trial.seed}"])


def _finish(running, config, plan):
    """Record of a child that exited by itself."""
    metrics = plan.target.final_metrics(running.model_dir)
    status, value, note = classify(running.proc.returncode, metrics,
                                   plan.metric, plan.target.result_file)
    steps = config.budget_steps
    if metrics and "meta_steps" in metrics:
        steps = int(metrics["meta_steps"])
    if status != "completed":
        steps = running.curve[-1][0] if running.curve else 0
    return running.record(status, value, note, plan.metric,
                          plan.progress_goal, steps)


def _check(running, config, plan, rule, peers):
    """None while the trial should go on; else its record (after stopping
    it)."""
    if running.proc.poll() is not None:
        running.close()
        running.curve = plan.target.progress(  # All flushed now.
            running.model_dir, plan.passthrough, plan.progress_tag)
        return _finish(running, config, plan)
    steps = running.curve[-1][0] if running.curve else 0
    limit = config.trial_timeout_minutes
    if limit and time.time() - running.start > 60 * limit:
        running.stop()
        return running.record("failed", None, f"timed out after {limit} min",
                              plan.metric, plan.progress_goal, steps,
                              "timeout")
    if rule is None:
        return None
    if stopping.diverged(running.curve):
        running.stop()
        return running.record(
            "diverged", None, f"{plan.progress_tag} is {running.curve[-1][1]} "
            f"at step {steps}", plan.metric, plan.progress_goal, steps,
            "divergence")
    if rule.should_stop(running.curve, peers):
        running.stop()
        return running.record(
            "stopped", None, f"median rule at step {steps}", plan.metric,
            plan.progress_goal, steps, "median")
    return None


def rescore(record, plan, sweep_dir):
    """A finished record ranked by `plan.metric`: when an earlier run of the
    sweep ranked by another metric, it is read again from the trial's result
    file, so re-ranking needs no re-training. Stopped trials have none."""
    if record.get("metric_name") == plan.metric or \
            record["status"] == "stopped" or record.get("stopped_by"):
        return record
    model_dir = os.path.join(sweep_dir, "trials", record["trial"], "model")
    status, value, note = classify(
        record.get("returncode"), plan.target.final_metrics(model_dir),
        plan.metric, plan.target.result_file)
    if record["status"] == "failed" and status == "failed":
        note = record.get("note", note)
    return dict(record, status=status, metric=value, note=note,
                metric_name=plan.metric)


def _progress_group(plan):
    return os.path.join("model", plan.target.progress_dir).rstrip(os.sep)


def _info(config, plan, records, wall, skipped):
    budget = config.budget_steps
    stopped = [r for r in records if r.get("stopped_by") in
               ("median", "divergence")]
    saved = sum(budget - r["steps"] for r in stopped) if budget else None
    counts = {s: sum(r["status"] == s for r in records) for s in FINISHED}
    return dict(
        target=plan.target.name, script=plan.target.script,
        sweep=config.sweep, search=config.search, budget_steps=budget,
        passthrough=list(config.passthrough), metric=plan.metric,
        goal=plan.goal, progress_tag=plan.progress_tag,
        progress_goal=plan.progress_goal,
        parallel=config.parallel or default_parallel(),
        early_stopping=dict(
            rule=config.early_stopping, grace_fraction=config.grace_fraction,
            min_trials=config.min_trials, trials_stopped=len(stopped),
            steps_saved=saved,
            steps_run=sum(int(r.get("steps") or 0) for r in records)),
        counts=counts, skipped_finished=skipped, wall_seconds=wall)


def _start(config, plan, sweep_dir, log):
    """Writes the sweep's settings and HParams config; returns the records
    of trials finished before (re-ranked) and the trials to run."""
    os.makedirs(os.path.join(sweep_dir, "trials"), exist_ok=True)
    saving.write_json(os.path.join(sweep_dir, "sweep.json"),
                      dataclasses.asdict(config))
    if not any(n.startswith("events.out") for n in os.listdir(sweep_dir)):
        report.write_hparams_config(sweep_dir, plan.axes,
                                    [t.seed for t in plan.trials], plan.metric,
                                    plan.goal, plan.progress_tag,
                                    _progress_group(plan))
    records, pending = {}, []
    for trial in plan.trials:
        record = load_record(sweep_dir, trial.trial)
        if record and not (config.retry_failed
                           and record["status"] == "failed"):
            records[trial.trial] = rescore(record, plan, sweep_dir)
        else:
            pending.append(trial)
    if records:
        log(f"Skipping {len(records)} finished trial(s) of "
            f"{len(plan.trials)}.")
    return records, pending


def _log_record(log, record, plan, done):
    value = record["metric"]
    shown = "" if value is None else f" {plan.metric}={value:.4g}"
    log(f"[{done}/{len(plan.trials)}] {record['status']} {record['trial']}:"
        f"{shown} ({record['seconds']:.0f} s, "
        f"{record['steps']} steps) {record['note']}".rstrip())


def _run_trials(config, plan, sweep_dir, records, pending, log):
    """Runs the `pending` trials, `parallel` at a time, adding their
    records to `records`."""
    rule = None
    if config.early_stopping == "median":
        rule = stopping.MedianStoppingRule(
            goal=plan.progress_goal, min_trials=config.min_trials,
            grace_steps=int(config.grace_fraction * (config.budget_steps or 0)))
    parallel = config.parallel or default_parallel()
    running = {}
    try:
        while pending or running:
            while pending and len(running) < parallel:
                trial = pending.pop(0)
                running[trial.trial] = _Running(config, plan, trial, sweep_dir)
                log(f"[{len(records) + len(running)}/{len(plan.trials)}] "
                    f"start {trial.trial}: {_describe(trial)}")
            time.sleep(config.poll_seconds)
            for run in running.values():
                run.curve = plan.target.progress(
                    run.model_dir, plan.passthrough, plan.progress_tag)
            for key in list(running):
                run = running[key]
                peers = [r.get("curve") or [] for r in records.values()]
                peers += [o.curve for k, o in running.items() if k != key]
                record = _check(run, config, plan, rule, peers)
                if record is None:
                    continue
                del running[key]
                records[key] = record
                save_record(sweep_dir, record)
                report.write_session_end(run.session_dir, record)
                _log_record(log, record, plan, len(records))
    finally:
        for run in running.values():  # Interrupted: no record, so a
            run.stop(grace_seconds=10)  # restart runs these again.


def run_sweep(config, log=print):
    """Runs the sweep `config` describes (see module docstring).

    Raises:
        ValueError: a bad setting, spec or flag (`plan.make_plan`).
        keras_meta.run_dir.DirectoryInUse: another sweep runs in
            `sweep_dir`.

    Returns:
        The summary dict (also written to `sweep_dir/summary.json`), with
        `trials` (rows best first) and `table` (Markdown).
    """
    plan = plan_lib.make_plan(config)
    start = time.time()
    sweep_dir = config.sweep_dir
    lock = run_dir.DirectoryLock(sweep_dir, log)
    lock.acquire()
    try:
        records, pending = _start(config, plan, sweep_dir, log)
        skipped = len(records)
        _run_trials(config, plan, sweep_dir, records, pending, log)
        names = [a.name for a in plan.axes]
        ordered = [records[t.trial] for t in plan.trials]
        rows = report.summary_rows(ordered, names, plan.goal,
                                   plan.progress_goal)
        info = _info(config, plan, ordered, time.time() - start, skipped)
        report.write_summary(sweep_dir, rows, info)
    finally:
        lock.release()
    table = report.format_table(rows, plan.metric)
    return dict(info, trials=rows, table=table)

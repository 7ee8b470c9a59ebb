"""Runs a sweep: one child process per trial, a few at a time.

`run_sweep(SweepConfig(...))` checks the spec against the target script's
flags before launching anything, then runs each trial as
`python <script> --<hparam>=<value> ... --seed=S --model_dir=<dir>
--<budget_flag>=N <pass-through flags>`, polls the children, stops clearly
bad ones (median rule), records every trial in `trials/<id>/trial.json`
(completed, stopped, diverged or failed: a failure never stops the sweep),
logs HParams summaries, and writes summary.csv / summary.json best first.
Restarted with the same settings, it skips trials already finished.

Example:
    >>> config = SweepConfig(target="train_maml", sweep="inner_lr=0.01,0.1",
    ...                      budget_steps=2000, sweep_dir="runs/sweep")
    >>> summary = run_sweep(config)  # doctest: +SKIP
"""

import dataclasses
import difflib
import json
import os
import shutil
import subprocess
import sys
import time

from keras_meta.sweeps import report
from keras_meta.sweeps import spec as spec_lib
from keras_meta.sweeps import stopping
from keras_meta.sweeps import targets as targets_lib

GOALS = ("minimize", "maximize")
SEARCHES = ("grid", "random")
EARLY_STOPPING = ("median", "none")
FINISHED = ("completed", "stopped", "diverged", "failed")


def default_parallel(cpus=None):
    """Trials at a time: half the CPU cores (a TensorFlow child uses two
    threads well), at least 1."""
    return max(1, (cpus or os.cpu_count() or 1) // 2)


@dataclasses.dataclass
class SweepConfig:
    """Settings of a sweep (the flags of examples/sweep.py).

    Attributes:
        target: a name in `targets.TARGETS`.
        sweep: the spec, e.g. "inner_lr=0.1,0.4;meta_lr=1e-3,3e-4".
        sweep_dir: where everything goes.
        search: "grid" (every combination) or "random" (`trials` points).
        trials: number of random points.
        seeds: runs per point, with seeds `seed`, `seed + 1`, ...
        seed: first trial seed; also seeds the random search.
        budget_steps: the target's step budget per trial (None: its default).
        parallel: trials at a time (None: `default_parallel()`).
        metric: final metric to rank by (None: the target's).
        goal: "minimize" or "maximize" (None: the target's).
        progress_tag: TensorBoard tag for early stopping (None: target's).
        progress_goal: goal of the progress tag (None: target's).
        early_stopping: "median" or "none".
        grace_fraction: no stopping before this fraction of the budget.
        min_trials: peers needed at a step before the rule may stop a trial.
        trial_timeout_minutes: a trial running longer fails (None: no limit).
        poll_seconds: how often children are checked.
        retry_failed: on restart, run failed trials again.
        script: path of the target script (None: the target's).
        passthrough: further `--flag=value` arguments for every trial.
        python: interpreter for the children.
    """

    target: str = "train_maml"
    sweep: str = ""
    sweep_dir: str = "runs/sweep"
    search: str = "grid"
    trials: int = 0
    seeds: int = 1
    seed: int = 0
    budget_steps: int = None
    parallel: int = None
    metric: str = None
    goal: str = None
    progress_tag: str = None
    progress_goal: str = None
    early_stopping: str = "median"
    grace_fraction: float = 0.3
    min_trials: int = 3
    trial_timeout_minutes: float = None
    poll_seconds: float = 5.0
    retry_failed: bool = False
    script: str = None
    passthrough: tuple = ()
    python: str = sys.executable


@dataclasses.dataclass(frozen=True)
class Trial:
    trial: str
    hparams: dict
    seed: int


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"--{name} must be one of {choices}; got {value!r}.")


def _unknown(name, known, what):
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {close}?" if close else ""
    return ValueError(f"{what} --{name} is not a flag of the target script."
                      f"{hint} Its flags: {sorted(known)}.")


def check_axes(axes, flags, reserved):
    """Axes with values converted to the flags' types.

    Raises:
        ValueError: an unknown or reserved flag, or a value the flag does
            not take.
    """
    out = []
    for axis in axes:
        if axis.name in reserved:
            raise ValueError(f"--{axis.name} is set by the sweep itself "
                             f"({reserved[axis.name]}); do not sweep it.")
        if axis.name not in flags:
            raise _unknown(axis.name, flags, "The sweep names")
        kind, choices = flags[axis.name]
        if axis.discrete:
            values = tuple(targets_lib.check_value(axis.name, v, kind, choices)
                           for v in axis.values)
            out.append(dataclasses.replace(axis, values=values))
        elif kind is float or (kind is int and axis.distribution == "randint"):
            out.append(axis)
        else:
            raise ValueError(f"--{axis.name} takes a {kind.__name__}; "
                             f"{axis.distribution}() does not fit it.")
    return out


def check_passthrough(passthrough, flags, reserved):
    """Checks pass-through flag names (`--noX` for a bool X is fine)."""
    for name in passthrough:
        base = name
        if name not in flags and name.startswith("no") and \
                flags.get(name[2:], (None,))[0] is bool:
            base = name[2:]
        if base in reserved:
            raise ValueError(f"--{base} is set by the sweep itself "
                             f"({reserved[base]}); do not pass it.")
        if base not in flags:
            raise _unknown(name, flags, "The pass-through flag")


@dataclasses.dataclass
class Plan:
    target: object
    axes: list
    trials: list
    passthrough: dict
    metric: str
    goal: str
    progress_tag: str
    progress_goal: str


def make_plan(config):
    """Validates the config against the target script and lists the trials
    (nothing is launched).

    Raises:
        ValueError: a bad spec, an unknown flag, a bad value or setting.
    """
    if config.target not in targets_lib.TARGETS:
        raise ValueError(f"--target must be one of "
                         f"{sorted(targets_lib.TARGETS)}; got {config.target!r}.")
    _check_choice("search", config.search, SEARCHES)
    _check_choice("early_stopping", config.early_stopping, EARLY_STOPPING)
    for name in ("goal", "progress_goal"):
        if getattr(config, name) is not None:
            _check_choice(name, getattr(config, name), GOALS)
    if config.seeds < 1:
        raise ValueError(f"--seeds must be >= 1; got {config.seeds}.")
    if config.budget_steps is not None and config.budget_steps < 1:
        raise ValueError(f"--budget_steps must be >= 1; got "
                         f"{config.budget_steps}.")
    if config.parallel is not None and config.parallel < 1:
        raise ValueError(f"--parallel must be >= 1; got {config.parallel}.")
    if config.search == "grid" and config.trials:
        raise ValueError("--trials applies to --search=random; a grid runs "
                         "every combination.")
    target = targets_lib.TARGETS[config.target]
    if config.script:
        target = dataclasses.replace(target, script=config.script)
    if not os.path.exists(target.script):
        raise ValueError(f"Target script {target.script} does not exist; "
                         "pass --script.")
    flags = target.flags()
    reserved = {"model_dir": "one per trial", "seed": "use --seed/--seeds",
                target.budget_flag: "use --budget_steps"}
    axes = check_axes(spec_lib.parse_sweep(config.sweep), flags, reserved)
    passthrough = targets_lib.parse_passthrough(config.passthrough)
    check_passthrough(passthrough, flags, reserved)
    if config.search == "grid":
        points = spec_lib.grid(axes)
    else:
        points = spec_lib.random_search(axes, config.trials, config.seed)
    fixed = [target.name, config.budget_steps,
             sorted(passthrough.items(), key=str)]
    trials = [Trial(spec_lib.trial_id(p, config.seed + r, fixed), p,
                    config.seed + r)
              for p in points for r in range(config.seeds)]
    metric, goal = target.metric_and_goal(passthrough)
    return Plan(
        target=target, axes=axes, trials=trials, passthrough=passthrough,
        metric=config.metric or metric, goal=config.goal or goal,
        progress_tag=config.progress_tag or target.progress_tag,
        progress_goal=config.progress_goal or (
            config.goal if config.progress_tag else target.progress_goal)
        or "minimize")


def command(config, plan, trial, model_dir):
    """The child's command line."""
    args = [config.python, plan.target.script]
    args += [f"--{k}={spec_lib.format_value(v)}"
             for k, v in trial.hparams.items()]
    args += [f"--seed={trial.seed}", f"--model_dir={model_dir}"]
    if config.budget_steps is not None:
        args.append(f"--{plan.target.budget_flag}={config.budget_steps}")
    given = {n[2:] if n.startswith("no") else n for n in plan.passthrough}
    args += [f"--{k}={v}" for k, v in plan.target.default_args
             if k not in given]
    args += list(config.passthrough)
    return args


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
    path = record_path(sweep_dir, record["trial"])
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2, default=str)
    os.replace(path + ".tmp", path)


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
    if not targets_lib.is_finite(value):
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
        self.cmd = command(config, plan, trial, self.model_dir)
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


def run_sweep(config, log=print):
    """Runs the sweep `config` describes (see module docstring).

    Returns:
        The summary dict (also written to `sweep_dir/summary.json`), with
        `trials` (rows best first) and `table` (Markdown).
    """
    plan = make_plan(config)
    start = time.time()
    sweep_dir = config.sweep_dir
    os.makedirs(os.path.join(sweep_dir, "trials"), exist_ok=True)
    with open(os.path.join(sweep_dir, "sweep.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=2)
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
    skipped = len(records)
    if skipped:
        log(f"Skipping {skipped} finished trial(s) of {len(plan.trials)}.")
    rule = None
    if config.early_stopping == "median":
        rule = stopping.MedianStoppingRule(
            goal=plan.progress_goal, min_trials=config.min_trials,
            grace_steps=int(config.grace_fraction * (config.budget_steps or 0)))
    parallel = config.parallel or default_parallel()
    running = {}
    total = len(plan.trials)
    try:
        while pending or running:
            while pending and len(running) < parallel:
                trial = pending.pop(0)
                running[trial.trial] = _Running(config, plan, trial, sweep_dir)
                log(f"[{len(records) + len(running)}/{total}] start "
                    f"{trial.trial}: {_describe(trial)}")
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
                value = record["metric"]
                shown = "" if value is None else f" {plan.metric}={value:.4g}"
                log(f"[{len(records)}/{total}] {record['status']} {key}:"
                    f"{shown} ({record['seconds']:.0f} s, "
                    f"{record['steps']} steps) {record['note']}".rstrip())
    finally:
        for run in running.values():  # Interrupted: no record, so a
            run.stop(grace_seconds=10)  # restart runs these again.
    names = [a.name for a in plan.axes]
    ordered = [records[t.trial] for t in plan.trials]
    rows = report.summary_rows(ordered, names, plan.goal, plan.progress_goal)
    info = _info(config, plan, ordered, time.time() - start, skipped)
    report.write_summary(sweep_dir, rows, info)
    table = report.format_table(rows, plan.metric)
    return dict(info, trials=rows, table=table)

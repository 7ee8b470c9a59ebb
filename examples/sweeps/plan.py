"""A sweep's plan: its settings and spec checked against the target
application's flags, and the list of trials, before anything is launched.
"""

import dataclasses
import difflib
import os

from examples.sweeps import config as config_lib
from examples.sweeps import goals
from examples.sweeps import spec as spec_lib
from examples.sweeps import targets as targets_lib


@dataclasses.dataclass(frozen=True)
class Trial:
    """One run: a point of the search and a seed, named by `trial` (an id
    that the point, the seed and the sweep's fixed settings determine)."""

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
    """What `make_plan` checked and resolved: the target, the typed axes,
    the trials, the pass-through flags, and the metrics with their goals."""

    target: object
    axes: list
    trials: list
    passthrough: dict
    metric: str
    goal: str
    progress_tag: str
    progress_goal: str


def _check_settings(config):
    """Raises ValueError for a setting of `config` out of its range."""
    if config.target not in targets_lib.TARGETS:
        raise ValueError(f"--target must be one of "
                         f"{sorted(targets_lib.TARGETS)}; got {config.target!r}.")
    _check_choice("search", config.search, config_lib.SEARCHES)
    _check_choice("early_stopping", config.early_stopping,
                  config_lib.EARLY_STOPPING)
    for name in ("goal", "progress_goal"):
        if getattr(config, name) is not None:
            _check_choice(name, getattr(config, name), goals.GOALS)
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


def _target(config):
    target = targets_lib.TARGETS[config.target]
    if config.script:
        target = dataclasses.replace(target, script=config.script)
    if not os.path.exists(target.script):
        raise ValueError(f"Target script {target.script} does not exist; "
                         "pass --script.")
    return target


def make_plan(config):
    """Validates the config against the target application's flags (its
    config) and lists the trials (nothing is launched).

    Raises:
        ValueError: a bad spec, an unknown flag, a bad value or setting.
    """
    _check_settings(config)
    target = _target(config)
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

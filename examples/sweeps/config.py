"""The settings of a sweep: one `SweepConfig`, the flags of examples/sweep.py
(`FLAG_SPECS`)."""

import dataclasses
import sys

from absl import flags

from examples import config_flags
from examples.config_flags import option
from examples.sweeps import goals
from examples.sweeps import targets

SEARCHES = ("grid", "random")
EARLY_STOPPING = ("median", "none")


@dataclasses.dataclass
class SweepConfig:
    """Settings of a sweep. None means "the target's default"."""

    target: str = option("train_maml", "The script whose flags are swept.",
                         choices=sorted(targets.TARGETS))
    sweep: str | None = option(
        None, "Axes 'name=v1,v2;name2=...'; random search also takes "
        "name=uniform(lo,hi), loguniform(lo,hi) or randint(lo,hi).")
    sweep_dir: str = option("runs/sweep", "Where trials, HParams summaries "
                            "and summary.csv/json go.")
    search: str = option("grid", "grid: every combination; random: "
                         "--trials points.", choices=SEARCHES)
    trials: int = option(0, "Random search: number of points.")
    seeds: int = option(1, "Trials per point (seeds seed, seed+1, ...).")
    seed: int = option(0, "First trial seed; seeds the random search too.")
    budget_steps: int | None = option(
        None, "(Meta-)steps per trial (the target's --train_steps or "
        "--meta_steps).")
    parallel: int | None = option(
        None, "Trials at a time (default: half the CPU cores, at least 1).")
    metric: str | None = option(
        None, "Final metric to rank by (train_maml: k<shots>_s<steps> of "
        "results.json, default k10_s1; learned optimizer: a key of "
        "summary.json, default final_eval_score).")
    goal: str | None = option(
        None, "Direction of --metric (default: the target's).",
        choices=goals.GOALS)
    progress_tag: str | None = option(
        None, "TensorBoard tag read for early stopping (default: the "
        "target's).")
    progress_goal: str | None = option(
        None, "Direction of --progress_tag.", choices=goals.GOALS)
    early_stopping: str = option(
        "median", "median: stop a trial worse than the median of its peers.",
        choices=EARLY_STOPPING)
    grace_fraction: float = option(
        0.3, "No early stop before this fraction of --budget_steps.")
    min_trials: int = option(3, "Peers needed at a step before the median "
                             "rule may stop a trial.")
    trial_timeout_minutes: float | None = option(
        None, "Fail trials running longer than this.")
    poll_seconds: float = option(5.0, "Seconds between checks of the "
                                 "children.")
    retry_failed: bool = option(False, "On restart, run failed trials "
                                "again.")
    script: str | None = option(None, "Path of the target script (default: "
                                "the one in examples/).")
    passthrough: tuple = option(
        (), "Further --flag=value arguments for every trial.", flag=False)
    python: str = option(sys.executable, "Interpreter for the children.",
                         flag=False)


FLAG_SPECS = config_flags.specs(SweepConfig)


def from_flags(passthrough, flag_values=flags.FLAGS):
    """The `SweepConfig` of the parsed flags and pass-through arguments."""
    return SweepConfig(passthrough=tuple(passthrough),
                       **config_flags.read(FLAG_SPECS, flag_values))

"""The applications a sweep can run, their flags, and how to read their
results.

A `Target` says which script runs the application, which flags it takes
(from the application's config: `examples/config_flags`), which flag is the
step budget, where the script writes its final results and intermediate
(progress) metric, and which metric to rank trials by unless the user
names another.
"""

import dataclasses
import glob
import json
import os

from tensorboard.backend.event_processing import event_file_loader
from tensorboard.util import tensor_util

from examples import config_flags
from examples.learned_optimizer import config as lopt_config
from examples.maml import config as maml_config
from examples.sweeps import spec as spec_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def check_value(name, value, kind, choices=None):
    """`value` converted to what flag `name` of type `kind` accepts.

    Raises:
        ValueError: the value cannot be that flag's.
    """
    if kind is float and isinstance(value, (int, float)) and \
            not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is bool and isinstance(value, bool):
        return value
    if kind in (str, list):
        if choices and str(value) not in choices:
            raise ValueError(f"--{name} must be one of {list(choices)}; the "
                             f"sweep gives {value!r}.")
        return value if kind is list else spec_lib.format_value(value)
    raise ValueError(f"--{name} takes a {kind.__name__}; the sweep gives "
                     f"{value!r}.")


def parse_passthrough(args):
    """`--name=value` / `--name` / `--noname` arguments as `{name: text}`.

    Raises:
        ValueError: an argument that is not of those forms.
    """
    out = {}
    for arg in args:
        if not arg.startswith("--") or len(arg) < 3:
            raise ValueError(f"Pass-through arguments must be --name=value; "
                             f"got {arg!r}.")
        name, eq, value = arg[2:].partition("=")
        out[name] = value if eq else None
    return out


def _table_metrics(results):
    """train_maml's results.json as flat metrics: k<shots>_s<steps> -> mean."""
    out = {f"k{row['shots']}_s{row['steps']}": row["mean"]
           for row in results.get("table", [])}
    for key in ("train_seconds", "eval_seconds", "meta_steps"):
        if key in results:
            out[key] = results[key]
    return out


def _flat_metrics(results, prefix=""):
    """Numeric leaves of a JSON dict, nested keys joined with '/'."""
    out = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_metrics(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def read_scalars(log_dir, tag):
    """`[(step, value)]` of scalar `tag` in the event files under `log_dir`
    (TF2 tensor summaries or TF1 simple values), sorted by step, last value
    per step. Files still being written are read as far as they go.

    Example:
        >>> read_scalars("runs/maml/logs/validation",
        ...              "query/loss_after_step_1")  # doctest: +SKIP
        [(0, 1.9), (1, 0.9)]
    """
    values = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.*"))):
        # Stops quietly at a record cut short by a writer still running.
        for event in event_file_loader.EventFileLoader(path).Load():
            for v in event.summary.value:
                if v.tag != tag:
                    continue
                if v.HasField("tensor"):
                    value = float(tensor_util.make_ndarray(v.tensor))
                else:
                    value = float(v.simple_value)
                values[int(event.step)] = value
    return sorted(values.items())


@dataclasses.dataclass(frozen=True)
class Target:
    """A script the sweep can run.

    Attributes:
        name: short name (`--target`).
        script: path of the absl script.
        flag_specs: the script's flags (`config_flags.FlagSpec`s).
        budget_flag: the flag that sets the number of (meta-)steps.
        result_file: JSON file the script writes in its model_dir at the end.
        default_args: flags passed unless the user passes them.
        progress_dir: where the progress metric's event files are, relative
            to model_dir.
        progress_tag: the TensorBoard tag of the progress metric.
        progress_goal: "minimize" or "maximize" for the progress metric.
        epoch_flag: if set, progress events are numbered by epoch (Keras)
            and this flag gives steps per epoch (default `epoch_default`, an
            int or a callable of the pass-through flags).
        metrics_fn: `results dict -> {name: value}`.
        default_metric: metric to rank by, or a callable of the
            pass-through flags returning `(metric, goal)`.
        default_goal: "minimize" or "maximize".
    """

    name: str
    script: str
    flag_specs: tuple
    budget_flag: str
    result_file: str
    default_args: tuple
    progress_dir: str
    progress_tag: str
    metrics_fn: object
    default_metric: object
    default_goal: str = "minimize"
    progress_goal: str = "minimize"
    epoch_flag: str = None
    epoch_default: object = 1

    def flags(self):
        """`{flag name: (kind, choices)}` of the script."""
        return config_flags.kinds(self.flag_specs)

    def metric_and_goal(self, passthrough):
        """(metric, goal) unless the user overrides them."""
        if callable(self.default_metric):
            return self.default_metric(passthrough)
        return self.default_metric, self.default_goal

    def progress(self, model_dir, passthrough, tag=None):
        """`[(meta_step, value)]` of the progress metric so far."""
        points = read_scalars(os.path.join(model_dir, self.progress_dir),
                              tag or self.progress_tag)
        if not self.epoch_flag:
            return points
        default = self.epoch_default
        if callable(default):
            default = default(passthrough)
        per_epoch = int(passthrough.get(self.epoch_flag) or default)
        # Keras numbers epochs from 0: epoch e ends at step (e + 1) * N.
        return [((s + 1) * per_epoch, v) for s, v in points]

    def final_metrics(self, model_dir):
        """The script's final metrics, or None if its result file is absent."""
        path = os.path.join(model_dir, self.result_file)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return self.metrics_fn(json.load(f))


def _maml_metric(passthrough):
    if passthrough.get("task") == "omniglot":
        return "first_row", "maximize"
    return "k10_s1", "minimize"


def _maml_steps_per_epoch(passthrough):
    """train_maml's steps per epoch when the flags leave it to the task."""
    default = maml_config.Config()
    task = passthrough.get("task") or default.task
    ways = int(passthrough.get("ways") or default.ways)
    return maml_config.task_defaults(task, ways)["steps_per_epoch"]


def _maml_metrics(results):
    out = _table_metrics(results)
    if results.get("table"):
        row = results["table"][0]
        out["first_row"] = row["mean"]
    return out


TARGETS = {
    "train_maml": Target(
        name="train_maml",
        script=os.path.join(ROOT, "examples", "train_maml.py"),
        flag_specs=tuple(maml_config.FLAG_SPECS),
        budget_flag="train_steps",
        result_file="results.json",
        default_args=(("verbose", "2"),),
        progress_dir=os.path.join("logs", "validation"),
        progress_tag="query/loss_after_step_1",
        metrics_fn=_maml_metrics,
        default_metric=_maml_metric,
        epoch_flag="steps_per_epoch",
        epoch_default=_maml_steps_per_epoch,
    ),
    "train_learned_optimizer": Target(
        name="train_learned_optimizer",
        script=os.path.join(ROOT, "examples", "train_learned_optimizer.py"),
        flag_specs=tuple(lopt_config.FLAG_SPECS),
        budget_flag="meta_steps",
        result_file="summary.json",
        default_args=(),
        progress_dir="",
        progress_tag="eval/score_learned",
        metrics_fn=_flat_metrics,
        default_metric="final_eval_score",
    ),
}

"""examples/sweeps and examples/sweep.py: spec parsing, planning against
the applications' configs, the median rule, failure handling, restart and
directory ownership (with a fast fake target), and a 2-trial train_maml
sweep end to end with its HParams summaries."""

import csv
import dataclasses
import glob
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from keras_meta import run_dir

from examples import config_flags
from examples.config_flags import option
from examples.sweeps import plan as plan_lib
from examples.sweeps import report
from examples.sweeps import runner
from examples.sweeps import spec
from examples.sweeps import stopping
from examples.sweeps import targets
from examples.sweeps.config import SweepConfig

# --- spec parsing ----------------------------------------------------------

GOOD_SPECS = [
    ("inner_lr=0.1,0.4", [("inner_lr", (0.1, 0.4))]),
    ("inner_lr=0.1,0.4;meta_lr=1e-3,3e-4",
     [("inner_lr", (0.1, 0.4)), ("meta_lr", (1e-3, 3e-4))]),
    (" inner_steps = 1, 5 ;", [("inner_steps", (1, 5))]),
    ("variant=maml,meta_sgd", [("variant", ("maml", "meta_sgd"))]),
    ("first_order=true,false", [("first_order", (True, False))]),
    ("lr=loguniform(1e-4, 1)", [("lr", ("loguniform", 1e-4, 1.0))]),
    ("n=randint(1,5)", [("n", ("randint", 1, 5))]),
]

BAD_SPECS = [
    ("", "empty"),
    (" ; ", "empty"),
    ("inner_lr", "no '='"),
    ("inner_lr=", "no values"),
    ("=0.1", "not a flag name"),
    ("inner-lr=0.1", "not a flag name"),
    ("inner_lr=0.1,,0.4", "empty value"),
    ("inner_lr=0.1,0.1", "repeats a value"),
    ("inner_lr=0.1;inner_lr=0.2", "more than once"),
    ("lr=loguniform(0,1)", "lo > 0"),
    ("lr=uniform(1,0)", "lo < hi"),
    ("lr=uniform(a,1)", "two numbers"),
    ("n=randint(1.5,3)", "integer ends"),
    ("lr=normal(0,1)", "cannot parse"),
]


@pytest.mark.parametrize("text,expected", GOOD_SPECS)
def test_parse_sweep_good(text, expected):
    axes = spec.parse_sweep(text)
    got = [(a.name, a.values if a.discrete else
            (a.distribution, a.low, a.high)) for a in axes]
    assert got == expected


@pytest.mark.parametrize("text,message", BAD_SPECS)
def test_parse_sweep_bad(text, message):
    with pytest.raises(ValueError, match=message):
        spec.parse_sweep(text)


def test_grid_random_and_trial_ids():
    axes = spec.parse_sweep("a=1,2,3;b=x,y")
    points = spec.grid(axes)
    assert len(points) == 6 and points[0] == {"a": 1, "b": "x"}
    assert points[1] == {"a": 1, "b": "y"}  # The last axis varies fastest.
    sample = spec.random_search(axes, 4, seed=3)
    assert sample == spec.random_search(axes, 4, seed=3)
    assert len({json.dumps(p, sort_keys=True) for p in sample}) == 4
    assert len(spec.random_search(axes, 100)) == 6  # Capped at the grid.
    continuous = spec.parse_sweep("lr=loguniform(1e-4,1e-1);n=randint(1,3)")
    for p in spec.random_search(continuous, 20, seed=1):
        assert 1e-4 <= p["lr"] <= 1e-1 and p["n"] in (1, 2, 3)
    with pytest.raises(ValueError, match="random"):
        spec.grid(continuous)
    ids = {spec.trial_id(p, 0, ["t", 10]) for p in points}
    assert len(ids) == 6
    assert spec.trial_id({"a": 1}, 0, ["t", 10]) == \
        spec.trial_id({"a": 1}, 0, ["t", 10])
    assert spec.trial_id({"a": 1}, 0, ["t", 10]) != \
        spec.trial_id({"a": 1}, 1, ["t", 10])
    assert spec.trial_id({"a": 1}, 0, ["t", 10]) != \
        spec.trial_id({"a": 1}, 0, ["t", 20])


def test_median_rule():
    rule = stopping.MedianStoppingRule(goal="minimize", grace_steps=20,
                                       min_trials=3)
    peers = [[(10, 2.0), (20, 1.0)], [(10, 3.0), (20, 2.0)],
             [(10, 4.0), (20, 3.0)]]
    assert rule.should_stop([(10, 9.0), (20, 5.0)], peers)
    assert not rule.should_stop([(10, 9.0), (20, 1.5)], peers)
    assert not rule.should_stop([(10, 9.0)], peers)  # Within the grace.
    assert not rule.should_stop([(10, 9.0), (20, 5.0)], peers[:2])
    # Peers that have not reached the step do not count.
    assert not rule.should_stop([(10, 9.0), (20, 5.0)],
                                [p[:1] for p in peers])
    # The trial's best so far counts, not its latest value.
    assert not rule.should_stop([(10, 1.0), (20, 5.0)], peers)
    maximize = dataclasses.replace(rule, goal="maximize")
    assert maximize.should_stop([(20, 0.5)], [[(20, 1.0)]] * 3)
    assert stopping.diverged([(10, 1.0), (20, math.nan)])
    assert not stopping.diverged([(10, math.nan), (20, 1.0)])


# --- planning: flags checked against the configs before anything runs --------------------------

def _plan(sweep, *passthrough, **kwargs):
    return plan_lib.make_plan(SweepConfig(
        target="train_maml", sweep=sweep, passthrough=passthrough,
        budget_steps=100, **kwargs))


def test_plan_checks_names_and_values_against_the_config():
    plan = _plan("inner_lr=0.1,1;inner_steps=1,5", "--task=sinusoid",
                 "--nojit_compile", seeds=2)
    assert len(plan.trials) == 8
    assert plan.axes[0].values == (0.1, 1.0)  # Ints become floats.
    assert (plan.metric, plan.goal) == ("k10_s1", "minimize")
    assert len({t.trial for t in plan.trials}) == 8
    with pytest.raises(ValueError, match=r"inner_lrr.*Did you mean"):
        _plan("inner_lrr=0.1")
    with pytest.raises(ValueError, match="set by the sweep"):
        _plan("train_steps=10,20")
    with pytest.raises(ValueError, match="set by the sweep"):
        _plan("inner_lr=0.1", "--model_dir=x")
    with pytest.raises(ValueError, match="takes a int"):
        _plan("inner_steps=1.5")
    with pytest.raises(ValueError, match="pass-through flag --bogus"):
        _plan("inner_lr=0.1", "--bogus=1")
    with pytest.raises(ValueError, match="--search=random"):
        _plan("inner_lr=loguniform(1e-3,1)")
    with pytest.raises(ValueError, match="--trials applies"):
        _plan("inner_lr=0.1", trials=3)
    # Choices come from the config, here examples.maml.config.VARIANTS.
    with pytest.raises(ValueError, match="--variant must be one of"):
        _plan("variant=maml,mamba")
    plan = _plan("inner_lr=0.1", "--task=omniglot")
    assert plan.goal == "maximize"
    lopt = plan_lib.make_plan(SweepConfig(
        target="train_learned_optimizer", sweep="unroll=10,20;meta_lr=1e-3"))
    assert lopt.metric == "final_eval_score"
    # The rule's flags come from lstm_rule.RuleConfig.
    rule = plan_lib.make_plan(SweepConfig(
        target="train_learned_optimizer", sweep="hidden_size=4,8",
        passthrough=("--granularity=tensor",)))
    assert rule.axes[0].values == (4, 8)
    with pytest.raises(ValueError, match="--descent must be one of"):
        plan_lib.make_plan(SweepConfig(target="train_learned_optimizer",
                                       sweep="descent=adam,sgd"))
    cmd = plan_lib.command(SweepConfig(budget_steps=7), lopt,
                           lopt.trials[0], "/m")
    assert cmd[2:] == ["--unroll=10", "--meta_lr=0.001", "--seed=0",
                       "--model_dir=/m", "--meta_steps=7"]


def test_script_rejects_an_unknown_flag_before_launching(tmp_path):
    sweep_dir = tmp_path / "s"
    result = subprocess.run(
        [sys.executable, os.path.join(targets.ROOT, "examples", "sweep.py"),
         "--sweep=inner_lr=0.1;inner_stepz=1,2", f"--sweep_dir={sweep_dir}",
         "--", "--nojit_compile"],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode != 0
    assert "--inner_stepz is not a flag" in result.stderr
    assert "Did you mean ['inner_steps'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not sweep_dir.exists()


# --- the runner, with a fast fake target (no TensorFlow in children) ------

FAKE_SCRIPT = textwrap.dedent("""
    import json, math, os, time
    from absl import app, flags
    flags.DEFINE_float("x", 1.0, "Quality: the loss is x / step.")
    flags.DEFINE_integer("steps", 4, "Budget.")
    flags.DEFINE_integer("seed", 0, "Seed.")
    flags.DEFINE_string("model_dir", None, "Output.")
    flags.DEFINE_float("sleep", 0.0, "Seconds per step.")
    F = flags.FLAGS

    def main(_):
        os.makedirs(F.model_dir, exist_ok=True)
        if F.x < 0:
            raise ValueError("x must be >= 0")
        for step in range(1, F.steps + 1):
            loss = math.nan if F.x == 13 else F.x / step
            with open(os.path.join(F.model_dir, "progress.jsonl"), "a") as f:
                f.write(json.dumps([step, loss]) + "\\n")
            time.sleep(F.sleep)
        with open(os.path.join(F.model_dir, "result.json"), "w") as f:
            json.dump({"loss": loss, "first": F.x}, f)

    app.run(main)
""")


@dataclasses.dataclass
class FakeConfig:
    """The fake script's flags, as a sweep sees them."""

    x: float = option(1.0, "Quality: the loss is x / step.")
    steps: int = option(4, "Budget.")
    seed: int = option(0, "Seed.")
    model_dir: str | None = option(None, "Output.")
    sleep: float = option(0.0, "Seconds per step.")


class FakeTarget(targets.Target):
    def progress(self, model_dir, passthrough, tag=None):
        path = os.path.join(model_dir, "progress.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [tuple(json.loads(line)) for line in f if line.strip()]


@pytest.fixture
def fake_target(tmp_path, monkeypatch):
    script = tmp_path / "fake.py"
    script.write_text(FAKE_SCRIPT)
    target = FakeTarget(
        name="fake", script=str(script),
        flag_specs=tuple(config_flags.specs(FakeConfig)), budget_flag="steps",
        result_file="result.json", default_args=(), progress_dir="",
        progress_tag="loss", metrics_fn=dict, default_metric="loss")
    monkeypatch.setitem(targets.TARGETS, "fake", target)
    return target


def _fake_sweep(sweep_dir, sweep, **kwargs):
    config = SweepConfig(target="fake", sweep=sweep,
                                sweep_dir=str(sweep_dir), budget_steps=4,
                                poll_seconds=0.05, **kwargs)
    logs = []
    return runner.run_sweep(config, log=logs.append), logs


def test_failed_and_diverged_trials_are_recorded_and_restart_skips(
        fake_target, tmp_path):
    summary, logs = _fake_sweep(tmp_path / "s", "x=2,-1,13,1", parallel=2,
                                early_stopping="none")
    by_x = {row["x"]: row for row in summary["trials"]}
    assert by_x[1.0]["status"] == "completed"
    assert by_x[1.0]["metric"] == pytest.approx(0.25)
    assert by_x[-1.0]["status"] == "failed"
    assert "x must be >= 0" in by_x[-1.0]["note"]
    assert by_x[13.0]["status"] == "diverged"
    assert [row["x"] for row in summary["trials"]] == [1.0, 2.0, 13.0, -1.0]
    assert summary["counts"] == dict(completed=2, stopped=0, diverged=1,
                                     failed=1)
    record = runner.load_record(str(tmp_path / "s"), by_x[-1.0]["trial"])
    assert "ValueError: x must be >= 0" in record["stderr_tail"]

    # Restart: everything finished is skipped; an unfinished trial re-runs.
    os.remove(runner.record_path(str(tmp_path / "s"), by_x[2.0]["trial"]))
    again, logs = _fake_sweep(tmp_path / "s", "x=2,-1,13,1", parallel=2,
                              early_stopping="none")
    assert logs[0] == "Skipping 3 finished trial(s) of 4."
    assert sum("start" in line for line in logs) == 1
    assert again["skipped_finished"] == 3
    assert [r["status"] for r in again["trials"]] == [
        r["status"] for r in summary["trials"]]
    again, _ = _fake_sweep(tmp_path / "s", "x=2,-1,13,1", parallel=2,
                           early_stopping="none", retry_failed=True)
    assert again["skipped_finished"] == 3  # Only the failed one re-ran.

    # Ranking by another metric re-reads the results; nothing re-runs.
    again, logs = _fake_sweep(tmp_path / "s", "x=2,-1,13,1", parallel=2,
                              early_stopping="none", metric="first",
                              goal="maximize")
    assert not any("start" in line for line in logs)
    assert [(r["x"], r["status"], r["metric"]) for r in again["trials"]] == [
        (13.0, "completed", 13.0), (2.0, "completed", 2.0),
        (1.0, "completed", 1.0), (-1.0, "failed", None)]


def test_a_second_sweep_on_the_same_directory_is_refused(
        fake_target, tmp_path, lock_holder):
    sweep_dir = tmp_path / "s"
    with lock_holder(sweep_dir) as pid:
        with pytest.raises(run_dir.DirectoryInUse,
                           match=f"{sweep_dir} is in use.*PID {pid}"):
            _fake_sweep(sweep_dir, "x=1", early_stopping="none")
    summary, logs = _fake_sweep(sweep_dir, "x=1", early_stopping="none")
    assert f"Taking over {sweep_dir}" in logs[0] and f"PID {pid}" in logs[0]
    assert summary["counts"]["completed"] == 1


def test_median_rule_stops_a_bad_trial(fake_target, tmp_path):
    summary, _ = _fake_sweep(tmp_path / "s", "x=1,2,3,50", parallel=1,
                             grace_fraction=0.0, passthrough=("--sleep=0.3",))
    by_x = {row["x"]: row for row in summary["trials"]}
    assert [by_x[x]["status"] for x in (1.0, 2.0, 3.0)] == ["completed"] * 3
    assert by_x[50.0]["status"] == "stopped"
    assert by_x[50.0]["steps"] < 4
    stop = summary["early_stopping"]
    assert stop["trials_stopped"] == 1
    assert stop["steps_saved"] == 4 - by_x[50.0]["steps"]


# --- train_maml end to end -------------------------------------------------

def _events(path):
    out = []
    for name in sorted(glob.glob(os.path.join(path, "events.out.*"))):
        out.extend(event_file_loader.EventFileLoader(name).Load())
    return out


def _hparams_data(events):
    for event in events:
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == "hparams":
                yield plugin_data_pb2.HParamsPluginData.FromString(
                    value.metadata.plugin_data.content)


def test_two_trial_train_maml_sweep_writes_hparams_and_summaries(tmp_path):
    sweep_dir = str(tmp_path / "sweep")
    config = SweepConfig(
        target="train_maml", sweep="inner_lr=0.01,0.05", budget_steps=20,
        sweep_dir=sweep_dir, parallel=2, poll_seconds=1.0,
        passthrough=("--steps_per_epoch=10", "--steps_per_execution=10",
                     "--eval_tasks=20", "--eval_shots=10", "--eval_steps=1",
                     "--meta_batch_size=5", "--nojit_compile"))
    summary = runner.run_sweep(config, log=lambda line: None)
    assert summary["counts"]["completed"] == 2, summary["trials"]
    assert summary["table"].startswith("| rank | trial | status | inner_lr |")

    (experiment,) = [d.experiment for d in _hparams_data(
        _events(sweep_dir)) if d.HasField("experiment")]
    assert [h.name for h in experiment.hparam_infos] == ["inner_lr", "seed"]
    assert list(experiment.hparam_infos[1].domain_discrete) == [0]
    assert {m.name.tag for m in experiment.metric_infos} >= {
        report.FINAL_TAG, "query/loss_after_step_1"}

    with open(os.path.join(sweep_dir, "summary.json")) as f:
        written = json.load(f)
    with open(os.path.join(sweep_dir, "summary.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == [t["trial"] for t in
                                          written["trials"]]
    assert float(rows[0]["metric"]) <= float(rows[1]["metric"])
    for row in written["trials"]:
        session = os.path.join(sweep_dir, "trials", row["trial"])
        events = _events(session)
        data = list(_hparams_data(events))
        start = [d.session_start_info for d in data
                 if d.HasField("session_start_info")]
        assert start[0].hparams["inner_lr"].number_value == row["inner_lr"]
        assert start[0].group_name == row["trial"]
        assert any(d.HasField("session_end_info") for d in data)
        finals = [tensor_util.make_ndarray(v.tensor).item() for e in events
                  for v in e.summary.value if v.tag == report.FINAL_TAG]
        assert finals == [pytest.approx(row["metric"])]
        with open(os.path.join(session, "model", "results.json")) as f:
            table = json.load(f)["table"]
        assert table[0]["mean"] == pytest.approx(row["metric"])

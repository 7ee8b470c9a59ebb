"""benchmarks/lopt_suite.py: workloads train, data is deterministic and
split, the Embedding workload's gradients are sparse, rates are chosen on
validation loss."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import lopt_suite
from benchmarks.suite import data as suite_data
from benchmarks.suite import dev_workloads
from benchmarks.suite import report
from benchmarks.suite import runner
from benchmarks.suite import workloads


def _splits(name):
    try:
        return workloads.WORKLOADS[name].data(0)
    except suite_data.DataUnavailable as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("name", list(workloads.WORKLOADS))
def test_workload_trains_with_adam_and_learned_optimizer(name):
    splits = _splits(name)
    workload = workloads.WORKLOADS[name]
    for spec in [("adam", 1e-3), ("learned", None)]:
        result = runner.fit(workload, splits, spec, seed=0, steps=3)
        assert result["finite"], (name, spec, result)
        assert np.isfinite(result["test_loss"]), (name, spec, result)
        assert result[f"test_{workload.metric}"] is not None


def _rows(x):
    return {a.tobytes() for a in np.asarray(x).reshape(len(x), -1)}


@pytest.mark.parametrize("name", list(workloads.WORKLOADS))
def test_data_is_deterministic_and_splits_are_disjoint(name):
    first, again = _splits(name), workloads.WORKLOADS[name].data(0)
    for (_, (x1, y1)), (_, (x2, y2)) in zip(first.items(), again.items()):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        assert len(x1) == len(y1) > 0
    train, val, test = (_rows(x) for _, (x, _) in first.items())
    assert not train & test and not train & val and not val & test
    if name not in ("omniglot_bn_conv", "omniglot_autoencoder"):
        other = workloads.WORKLOADS[name].data(1).train[0]
        assert not np.array_equal(other, first.train[0])


def test_omniglot_uses_only_held_out_alphabets_and_a_fixed_split():
    splits = _splits("omniglot_bn_conv")
    counts = [np.bincount(y) for _, (_, y) in splits.items()]
    # 42 Sanskrit + 17 Tagalog characters, 12/4/4 drawings each.
    for count, n in zip(counts, suite_data.OMNIGLOT_SPLIT):
        assert len(count) == 59 and np.all(count == n)


def test_embedding_workload_has_indexed_slices_gradients():
    workload = workloads.WORKLOADS["embedding_text"]
    x, y = workload.data(0).train
    model = workload.build()
    with tf.GradientTape() as tape:
        loss = workload.loss(y[:8], model(x[:8]))
    grads = tape.gradient(loss, model.trainable_variables)
    kinds = {v.path: type(g) for v, g in zip(model.trainable_variables,
                                              grads)}
    embedding = [k for p, k in kinds.items() if "embedding" in p]
    assert embedding == [tf.IndexedSlices], kinds


def test_rate_chosen_on_validation_not_test_and_nonfinite_excluded():
    def run(val, test, finite=True):
        return {"finite": finite, "val_loss": val, "test_loss": test,
                "test_accuracy": 0.5}
    runs = {"a": [run(1.0, 9.0)] * 2, "b": [run(2.0, 0.1)] * 2,
            "c": [run(0.1, 0.1), run(None, None, False)]}
    groups = {"adam_best": ("grid", {1e-3: "a", 1e-2: "b", 3e-2: "c"}),
              "learned": ("single", "b")}
    summary = report.summarize(runs, groups, "accuracy")
    assert summary["adam_best"]["rate"] == 1e-3
    assert summary["adam_best"]["test_loss_mean"] == 9.0
    assert summary["adam_best"]["grid_nonfinite"] == 1
    assert summary["learned"]["ratio_to_adam_best"] == pytest.approx(0.1 / 9)


def test_optimizer_groups_share_adam_1e3_with_the_grid():
    groups, specs = lopt_suite.optimizer_groups(
        ["adam_best", "adamw_best", "adam_1e-3", "learned"], ["per_tensor"])
    assert len(specs) == 12
    assert groups["adam_1e-3"] == ("single", "adam 0.001")
    assert "learned[per_tensor]" in groups
    with pytest.raises(ValueError, match="Unknown"):
        lopt_suite.optimizer_groups(["sgd"], [])
    # One fixed-rate row per grid rate, on the grid's runs.
    groups, specs = lopt_suite.optimizer_groups(["adam_best", "adam_fixed"],
                                                [])
    assert len(specs) == 5
    assert groups["adam_fixed[0.0003]"] == ("single", "adam 0.0003")
    assert sum(g.startswith("adam_fixed") for g in groups) == 5


def test_weights_options_and_the_ema_peer():
    groups, specs = lopt_suite.optimizer_groups(
        ["adam_1e-3_ema"], ["init_normalized+ema+none"])
    key = groups["learned[init_normalized+ema+none]"][1]
    assert specs[key] == ("learned", "init_normalized", ("ema", "none"))
    opt = runner.make_optimizer(specs[key])
    assert opt.use_ema and opt._rule_config.normalize == "none"
    assert runner.make_optimizer(specs[groups["adam_1e-3_ema"][1]]).use_ema
    assert runner.learned_spec("default") == ("learned", None)
    assert runner.learned_spec("normalized+none+ema") == (
        "learned", "normalized", ("ema", "none"))
    # Without "ema", LearnedOptimizer's own default: the default averages,
    # named weights do not.
    assert runner.make_optimizer(("learned", None)).use_ema
    assert not runner.make_optimizer(("learned", "normalized")).use_ema
    with pytest.raises(ValueError, match="Unknown option 'fast'"):
        runner.make_optimizer(("learned", None, ("fast",)))
    opt = runner.make_optimizer(("learned", "init_normalized", (
        "hyper_rate=0.1", "hyper_offset_range=-1:2", "hyper_momentum=2",
        "none")))
    config = opt._rule_config
    assert (config.hyper_rate, config.hyper_offset_range,
            config.hyper_momentum, config.normalize) == (
                0.1, (-1.0, 2.0), 2, "none")


def test_control_rows_train_under_validation_control(monkeypatch):
    groups, specs = lopt_suite.optimizer_groups(
        ["adam_1e-3_ema_control"], ["normalized+ema+control"])
    peer = specs[groups["adam_1e-3_ema_control"][1]]
    learned = specs[groups["learned[normalized+ema+control]"][1]]
    assert peer == ("adam_ema", 1e-3, "control")
    assert runner.controlled(peer) and runner.controlled(learned)
    assert not runner.controlled(("adam_ema", 1e-3))
    assert not runner.controlled(("learned", "normalized", ("ema",)))
    opt = runner.make_optimizer(learned)
    assert opt.use_ema and opt.rule is None
    options = ("learned", "normalized", (
        "control", "control_decay_factor=0", "control_patience=1", "ema"))
    assert runner.controlled(options)
    assert runner.control_options(options) == {"decay_factor": 0,
                                               "patience": 1}
    assert runner.make_optimizer(options).rule is None
    made = []
    real = runner.validation_control.ValidationControl

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]
    monkeypatch.setattr(runner.validation_control, "ValidationControl", spy)
    workload = dev_workloads.DEV_WORKLOADS["tanh_regression"]
    splits = workload.data(0)
    result = runner.fit(workload, splits, peer, seed=0, steps=250)
    assert result["finite"] and len(made) == 1
    assert made[0].decay_factor == runner.CONTROL_DEFAULTS["decay_factor"]
    assert [e["step"] for e in made[0].history] == [250]
    assert len(made[0].train_data[0]) == min(len(splits.train[0]),
                                             len(splits.val[0]))


def test_control_default_row_uses_the_callbacks_defaults():
    groups, specs = lopt_suite.optimizer_groups(
        ["adam_1e-3_ema_control", "adam_1e-3_ema_control_default"], [])
    old = specs[groups["adam_1e-3_ema_control"][1]]
    new = specs[groups["adam_1e-3_ema_control_default"][1]]
    assert new == ("adam_ema", 1e-3, "control_default")
    assert runner.controlled(new)
    assert runner.control_arguments(new) == {}
    assert runner.control_arguments(old) == runner.CONTROL_DEFAULTS
    learned = ("learned", "normalized", (
        "control", "control_every=auto", "ema"))
    assert runner.control_arguments(learned) == {
        **runner.CONTROL_DEFAULTS, "every": "auto"}


def test_ablations_remove_the_named_part_of_the_rule():
    from keras_meta.optimizers import weights_io
    phi, config = weights_io.resolve("normalized")
    opt = runner.make_optimizer(("learned", "normalized", (
        "ablate=parameter_feature", "ema")))
    assert opt.use_ema and not opt._rule_config.parameter_feature
    np.testing.assert_array_equal(opt.phi["mlp0/kernel"].numpy(),
                                  phi["mlp0/kernel"][:-1])
    opt = runner.make_optimizer(("learned", "normalized", ("ablate=mlp",)))
    assert opt._rule_config == config
    assert not np.any(opt.phi["out/kernel"].numpy())
    np.testing.assert_array_equal(opt.phi["log_lr"].numpy(), phi["log_lr"])
    opt = runner.make_optimizer(("learned", "normalized", ("mlp_scale=0.25",)))
    np.testing.assert_allclose(opt.phi["out/kernel"].numpy(),
                               0.25 * phi["out/kernel"], rtol=1e-6)
    np.testing.assert_allclose(opt.phi["out/bias"].numpy(),
                               0.25 * phi["out/bias"], rtol=1e-6)
    np.testing.assert_array_equal(opt.phi["mlp0/kernel"].numpy(),
                                  phi["mlp0/kernel"])
    opt = runner.make_optimizer(("learned", "normalized", (
        "parameter_feature_scale=0.5",)))
    assert opt._rule_config == config
    np.testing.assert_allclose(opt.phi["mlp0/kernel"].numpy(), np.concatenate(
        [phi["mlp0/kernel"][:-1], 0.5 * phi["mlp0/kernel"][-1:]]), rtol=1e-6)
    opt = runner.make_optimizer(("learned", "normalized", (
        "decay_power=0.5", "decay_start=1000", "mlp_tensors=matrices",
        "dense_table_decay=false", "lazy_tables=true")))
    assert opt._rule_config == dataclasses.replace(
        config, decay_power=0.5, decay_start=1000.0, mlp_tensors="matrices",
        dense_table_decay=False, lazy_tables=True)
    np.testing.assert_array_equal(opt.phi["out/kernel"].numpy(),
                                  phi["out/kernel"])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        runner.make_optimizer(("learned", "normalized", ("mlp_scale=2",)))
    with pytest.raises(ValueError, match="Unknown 'ablate=lstm'"):
        runner.make_optimizer(("learned", "normalized", ("ablate=lstm",)))
    with pytest.raises(ValueError, match="needs a normalized rule"):
        runner.make_optimizer(("learned", "per_tensor", ("ablate=mlp",)))


@pytest.mark.parametrize("name", list(dev_workloads.DEV_WORKLOADS))
def test_dev_workloads_train_and_split(name):
    workload = dev_workloads.DEV_WORKLOADS[name]
    splits = workload.data(0)
    sizes = [len(x) for _, (x, _) in splits.items()]
    assert all(n >= 400 for n in sizes), sizes
    model = workload.build()
    x, _ = splits.test
    assert model(x[:2]).shape[0] == 2
    if name == "lexicon_sentiment":  # a batch touches few table rows
        train_x, train_y = splits.train
        assert len(np.unique(train_x[:32])) < 4000 // 4
        assert 0.3 < train_y.mean() < 0.7
    if name == "keywords":  # one fit, with the sparse-gradient model
        result = runner.fit(workload, splits, ("adam", 1e-3), seed=0,
                            steps=2)
        assert result["finite"] and np.isfinite(result["test_loss"])


def test_reuse_copies_earlier_runs_and_trains_only_the_rest(tmp_path,
                                                            monkeypatch):
    earlier = {"workload_set": "dev", "cells": {"keywords": {"1000": {
        "runs": {"adam 0.001": [{"test_loss": 1.5}, {"test_loss": 2.5}]}}}}}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier))
    reuse = lopt_suite.reusable_runs([str(path)], "dev")
    assert reuse[("keywords", 1000, "adam 0.001", 1)] == {"test_loss": 2.5}
    with pytest.raises(ValueError, match="'dev' workload set, not 'held_out'"):
        lopt_suite.reusable_runs([str(path)], "held_out")
    # Nor is any other set's run copied into the report set; a record
    # without a set is of the held-out suite.
    with pytest.raises(ValueError, match="'dev' workload set, not 'report'"):
        lopt_suite.reusable_runs([str(path)], "report")
    older = tmp_path / "older.json"
    older.write_text(json.dumps({"cells": earlier["cells"]}))
    with pytest.raises(ValueError,
                       match="'held_out' workload set, not 'report'"):
        lopt_suite.reusable_runs([str(older)], "report")
    assert lopt_suite.reusable_runs([str(older)], "held_out")

    trained = []
    monkeypatch.setattr(runner, "fit", lambda workload, splits, spec, seed,
                        steps: trained.append((spec, seed)) or {
                            "test_loss": 0.0, "seconds": 0.0})

    class Workload:
        def data(self, seed):
            return None
    specs = {"adam 0.001": ("adam", 1e-3), "learned default": ("learned",
                                                               None)}
    runs = lopt_suite.run_cell(Workload(), "keywords", 1000, 2, specs, reuse)
    assert [r["test_loss"] for r in runs["adam 0.001"]] == [1.5, 2.5]
    assert trained == [(("learned", None), 0), (("learned", None), 1)]

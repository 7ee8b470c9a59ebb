"""examples/train_maml.py end to end, with a tiny budget."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_meta
from examples.maml import config as maml_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def event_tags(log_dir):
    tags = set()
    for path in glob.glob(os.path.join(log_dir, "**", "events.*"),
                          recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.add(value.tag)
    return tags


def test_script_trains_saves_logs_and_reports(tmp_path):
    model_dir = str(tmp_path / "run")
    cmd = [
        sys.executable, os.path.join(ROOT, "examples", "train_maml.py"),
        f"--model_dir={model_dir}", "--variant=meta_sgd", "--train_steps=40",
        "--steps_per_epoch=20", "--steps_per_execution=10",
        "--eval_tasks=20", "--eval_shots=5,10", "--eval_steps=1,3",
        "--meta_batch_size=5", "--verbose=2", "--nojit_compile",
        "--profile", "--profile_batches=2,3",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| K | steps | query MSE (mean +- 95% CI) | median |" in result.stdout
    assert "| 10 | 3 |" in result.stdout

    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    assert [(r["shots"], r["steps"]) for r in results["table"]] == [
        (5, 1), (5, 3), (10, 1), (10, 3)]
    assert all(np.isfinite(r["mean"]) and r["ci"] > 0
               for r in results["table"])

    tags = event_tags(os.path.join(model_dir, "logs"))
    for tag in ("meta/loss", "query/pre_adapt_loss", "query/post_adapt_loss"):
        assert tag in tags, tags
    assert any(t.startswith("rule/rate/") for t in tags), tags
    assert "rule/update_size/step_1" in tags, tags
    # --profile: a trace of train-function calls 2..3 for the Profile tab.
    assert glob.glob(os.path.join(model_dir, "logs", "train", "plugins",
                                  "profile", "*", "*.xplane.pb")), tags

    maml = keras.models.load_model(os.path.join(model_dir, "model.keras"))
    assert isinstance(maml, keras_meta.MetaSGD)
    episode = next(iter(keras_meta.data.sinusoid(shots=5, seed=9)))
    adapted = maml.adapt(episode["support_x"][0], episode["support_y"][0])
    assert adapted.predict(episode["query_x"][0], verbose=0).shape == (10, 1)


@pytest.mark.parametrize("variant, inner, expected", [
    ("maml", None, "sgd"), ("meta_sgd", None, "meta_sgd"),
    ("maml_plus_plus", None, "lslr"), ("maml", "lstm", "lstm"),
    ("anil", "meta_sgd", "meta_sgd"), ("meta_sgd", "meta_sgd", "meta_sgd"),
])
def test_inner_optimizer_flag_and_variant(variant, inner, expected):
    config = maml_config.resolve(maml_config.Config(
        variant=variant, inner_optimizer=inner))
    assert config.inner_optimizer == expected


@pytest.mark.parametrize("variant, inner, message", [
    ("meta_sgd", "lstm", "--variant=meta_sgd implies "
     "--inner_optimizer=meta_sgd; got --inner_optimizer=lstm"),
    ("maml", "adam", "--inner_optimizer must be one of"),
])
def test_inner_optimizer_flag_conflicts(variant, inner, message):
    with pytest.raises(ValueError, match=message):
        maml_config.resolve(maml_config.Config(
            variant=variant, inner_optimizer=inner))


def test_proto_maml_variant_is_an_omniglot_classifier_without_zero_head():
    config = maml_config.resolve(maml_config.Config(
        task="omniglot", variant="proto_maml", inner_optimizer="meta_sgd"))
    assert config.inner_optimizer == "meta_sgd"
    # Support views by default (chosen on validation), not for plain MAML
    # or with the paper's settings.
    assert config.support_shift == 3
    assert maml_config.resolve(maml_config.Config(
        task="omniglot", variant="proto_maml",
        paper_settings=True)).support_shift == 0
    assert maml_config.resolve(maml_config.Config(
        task="omniglot")).support_shift == 0
    with pytest.raises(ValueError, match="--variant=proto_maml .* needs "
                       "--task=omniglot, got --task=sinusoid"):
        maml_config.resolve(maml_config.Config(variant="proto_maml"))
    with pytest.raises(ValueError, match="--zero_head contradicts "
                       "--variant=proto_maml"):
        maml_config.resolve(maml_config.Config(
            task="omniglot", variant="proto_maml", zero_head=True))


def test_script_refuses_a_model_dir_in_use(tmp_path, lock_holder):
    model_dir = tmp_path / "run"
    with lock_holder(model_dir) as pid:
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, "examples", "train_maml.py"),
             f"--model_dir={model_dir}", "--train_steps=1"],
            capture_output=True, text=True, timeout=300,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"{model_dir} is in use by another run (PID {pid}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (model_dir / "checkpoints").exists()


def test_zero_head_flag_builds_maml_with_a_zeroed_head():
    from examples.maml import tasks
    from examples.maml import train
    config = maml_config.resolve(maml_config.Config(zero_head=True))
    maml = train.build_maml(config, tasks.make_task(config))
    head = maml.zeroed_layers[0]
    assert maml.zeroed_layers == [maml.model.layers[-1].name]
    assert not any(np.any(v.numpy()) for v in
                   maml.model.get_layer(head).trainable_variables)
    plain = maml_config.resolve(maml_config.Config())
    assert train.build_maml(plain, tasks.make_task(plain)).zeroed_layers is None

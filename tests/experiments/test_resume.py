"""Checkpoints and --resume: an interrupted run ends where a whole one does."""

import os

import numpy as np
import pytest

import keras
from keras_meta import callbacks
from examples.maml import config as maml_config
from examples.maml import train


def config(model_dir, **overrides):
    values = dict(task="sinusoid", model_dir=str(model_dir), train_steps=40,
                  steps_per_epoch=10, checkpoint_every=10,
                  steps_per_execution=5, meta_batch_size=5, eval_tasks=10,
                  eval_shots=(5,), eval_steps=(1,), eval_queries=10,
                  jit_compile=False, keep_checkpoints=2, verbose=0)
    values.update(overrides)
    return maml_config.Config(**values)


def test_resumed_run_matches_uninterrupted_run(tmp_path):
    whole = train.run(config(tmp_path / "whole"))
    train.run(config(tmp_path / "split", train_steps=20))
    # Starting again without --resume would silently restart: refused.
    with pytest.raises(ValueError, match="pass --resume"):
        train.run(config(tmp_path / "split"))
    resumed = train.run(config(tmp_path / "split", resume=True))

    assert whole["meta_steps"] == resumed["meta_steps"] == 40
    a = keras.models.load_model(whole["model_path"])
    b = keras.models.load_model(resumed["model_path"])
    for x, y in zip(a.weights + a.optimizer.variables,
                    b.weights + b.optimizer.variables):
        np.testing.assert_array_equal(x.numpy(), y.numpy(), err_msg=x.path)
    names = sorted(os.listdir(tmp_path / "split" / "checkpoints"))
    # The kept checkpoints and the run's saved settings (run_dir).
    assert names == ["ckpt-000000030.keras", "ckpt-000000040.keras",
                     "run_config.json"]
    assert resumed["resumes"][0]["changed"] == {"train_steps": [20, 40]}


def test_latest_checkpoint_ignores_partial_writes(tmp_path):
    assert callbacks.latest_checkpoint(str(tmp_path / "none")) is None
    (tmp_path / "ckpt-000000010.keras").write_bytes(b"complete")
    (tmp_path / ".tmp-20.keras").write_bytes(b"half")
    assert callbacks.latest_checkpoint(str(tmp_path)).endswith(
        "ckpt-000000010.keras")


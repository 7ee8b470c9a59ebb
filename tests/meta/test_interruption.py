"""Meta-training of the learned optimizer: checkpoints, resume, signals and
the stop after consecutive non-finite meta-steps."""

import os
import signal

import numpy as np
import pytest

from keras_meta import callbacks
from keras_meta import errors
from keras_meta.meta import problems
from keras_meta.meta import trainer
from keras_meta.rules import lstm as lstm_rule
from keras_meta.optimizers import weights_io

from examples.learned_optimizer import config as lopt_config
from examples.learned_optimizer import train as lopt_train

RULE = {"hidden_size": 4, "num_layers": 1}


def run(model_dir, meta_steps, **kwargs):
    # unroll 5 over horizon 10: checkpoints land mid-run and between runs.
    return lopt_train.run(lopt_config.Config(
        problems=("quadratic",), unroll=5, horizon=10, meta_steps=meta_steps,
        meta_lr=1e-2, model_dir=str(model_dir), rule=RULE, eval_every=3,
        checkpoint_every=3, verbose=0, **kwargs))


def phi_last(model_dir):
    return weights_io.load_phi(os.path.join(model_dir, "phi_last.npz"))[0]


def test_stops_after_consecutive_non_finite_meta_steps():
    cfg = lstm_rule.RuleConfig(hidden_size=4, num_layers=1)
    phi = lstm_rule.init_phi(cfg)
    phi["log_lr"] = np.array(80.0, "float32")  # exp(80) overflows float32
    mt = trainer.MetaTrainer(
        [problems.QuadraticProblem(batch_size=4, num_dims=3)], config=cfg,
        phi=phi, unroll=2, horizon=4, max_consecutive_skips=3)
    mt.meta_step()
    mt.meta_step()
    with pytest.raises(errors.NonFiniteError, match=(
            "stopped at meta-step 3: the optimizee loss was not finite in 3 "
            "consecutive truncations")) as info:
        mt.meta_step()
    assert info.value.step == 3
    np.testing.assert_array_equal(mt.phi_numpy()["log_lr"], 80.0)


def test_resumed_meta_training_matches_uninterrupted(tmp_path):
    whole = run(tmp_path / "whole", 8)
    run(tmp_path / "split", 5)  # checkpoint at 3; stops after 5 (mid-run)
    with pytest.raises(ValueError, match="pass --resume"):
        run(tmp_path / "split", 8)
    resumed = run(tmp_path / "split", 8, resume=True)
    # Resumed from meta-step 3: steps 4 and 5 are redone, as after a crash.
    a, b = phi_last(tmp_path / "whole"), phi_last(tmp_path / "split")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert resumed["best_eval_score"] == whole["best_eval_score"]


def test_sigterm_checkpoints_and_resume_continues(tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    run(whole, 7)
    step_fn = trainer.MetaTrainer.meta_step

    def meta_step_then_signal(self):
        logs = step_fn(self)
        if self.meta_steps_done == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return logs

    monkeypatch.setattr(trainer.MetaTrainer, "meta_step",
                        meta_step_then_signal)
    stopped = tmp_path / "stopped"
    with pytest.raises(errors.TrainingInterrupted,
                       match="signal 15 at step 4") as info:
        run(stopped, 7)
    assert info.value.checkpoint == callbacks.latest_checkpoint(
        str(stopped / "checkpoints"), ".npz")
    assert info.value.checkpoint.endswith("ckpt-000000004.npz")
    # The handler was removed again: SIGTERM's default is back.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    monkeypatch.undo()
    run(stopped, 7, resume=True)
    a, b = phi_last(whole), phi_last(stopped)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)

"""Fault injection: a real training process killed (SIGKILL) or stopped
(SIGTERM) at a random step, then resumed, ends with the same weights as an
uninterrupted run with the same seed, bitwise."""

import glob
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import keras
from keras_meta import callbacks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
# Small enough for CI, long enough (a few seconds of steps, one batch per
# execution) that a kill lands mid-training.
FLAGS = ["--train_steps=1200", "--steps_per_epoch=100",
         "--checkpoint_every=100", "--steps_per_execution=1",
         "--meta_batch_size=4", "--eval_tasks=10", "--eval_shots=5",
         "--eval_steps=1", "--nojit_compile", "--verbose=0", "--seed=3"]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def start(model_dir, *extra):
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "examples", "train_maml.py"),
         f"--model_dir={model_dir}", *FLAGS, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)


def finish(process, timeout=300):
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def wait_for_checkpoint(model_dir, process, timeout=240):
    deadline = time.monotonic() + timeout
    folder = os.path.join(model_dir, "checkpoints")
    while callbacks.latest_checkpoint(folder) is None:
        assert process.poll() is None, finish(process)[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def weights(path):
    model = keras.models.load_model(path)
    return [v.numpy() for v in model.weights + model.optimizer.variables]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """`uninterrupted()`: the weights of the uninterrupted run. The run
    starts here and trains while the first test's run is interrupted and
    resumed (separate processes and directories); its weights are read
    when a test first compares with them."""
    model_dir = str(tmp_path_factory.mktemp("whole"))
    process = start(model_dir)
    result = []

    def get():
        if not result:
            code, out = finish(process)
            assert code == 0, out[-3000:]
            result.append(weights(os.path.join(model_dir, "model.keras")))
        return result[0]

    yield get
    if process.poll() is None:
        process.kill()
        process.communicate()


def assert_same(expected, model_dir, note):
    got = weights(os.path.join(model_dir, "model.keras"))
    assert len(got) == len(expected)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b, err_msg=note)


def interrupt(model_dir, signum):
    """Starts a run and sends `signum` at a random moment after its first
    checkpoint; returns (exit code, output, a note for assertions)."""
    delay = random.Random().uniform(0.0, 1.5)
    note = f"signal {signum} {delay:.2f} s after the first checkpoint"
    process = start(model_dir)
    wait_for_checkpoint(model_dir, process)
    time.sleep(delay)
    process.send_signal(signum)
    code, out = finish(process)
    return code, out, note


def test_sigkill_at_a_random_step_then_resume(tmp_path, uninterrupted):
    model_dir = str(tmp_path / "killed")
    code, _, note = interrupt(model_dir, signal.SIGKILL)
    assert code == -signal.SIGKILL, note
    assert not os.path.exists(os.path.join(model_dir, "model.keras")), note

    code, out = finish(start(model_dir, "--resume"))
    assert code == 0, (note, out[-3000:])
    assert "Resuming from" in out
    assert_same(uninterrupted(), model_dir, note)


def test_sigterm_checkpoints_mid_epoch_and_exits(tmp_path, uninterrupted):
    model_dir = str(tmp_path / "stopped")
    code, out, note = interrupt(model_dir, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, (note, out[-3000:])
    assert "Training interrupted by signal 15 at step" in out, out[-3000:]
    step = int(out.split("at step ")[1].split(";")[0])
    checkpoint = callbacks.latest_checkpoint(
        os.path.join(model_dir, "checkpoints"))
    assert checkpoint.endswith(f"{step:09d}.keras"), (note, checkpoint)
    assert not glob.glob(os.path.join(model_dir, "checkpoints", ".tmp*"))

    code, out = finish(start(model_dir, "--resume"))
    assert code == 0, (note, out[-3000:])
    assert f"at step {step}." in out
    assert_same(uninterrupted(), model_dir, note)

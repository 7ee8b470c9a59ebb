"""The package selects the TensorFlow backend and rejects others clearly."""

import os
import subprocess
import sys

import keras


def test_tensorflow_backend_is_selected():
    assert keras.backend.backend() == "tensorflow"


def test_other_backend_fails_with_clear_message():
    env = dict(os.environ, KERAS_BACKEND="jax")
    result = subprocess.run(
        [sys.executable, "-c", "import keras_meta"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "needs the TensorFlow Keras backend" in result.stderr
    assert "'jax'" in result.stderr

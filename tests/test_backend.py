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


import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_meta import backend as km_backend  # noqa: E402


@pytest.mark.parametrize("devices,strategy,want", [
    (["CPU"], None, False),
    (["CPU", "GPU"], None, True),
    (["CPU", "TPU"], None, True),
    (["CPU", "GPU"], tf.distribute.MirroredStrategy(["/cpu:0"]), False),
])
def test_default_jit_compile(devices, strategy, want):
    assert km_backend.default_jit_compile(devices, strategy) is want


def test_maml_auto_jit_compile():
    import keras_meta
    dense = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    conv = keras.Sequential([keras.Input((4, 4, 1)),
                             keras.layers.Conv2D(2, 3), keras.layers.Flatten(),
                             keras.layers.Dense(1)])
    for net, on_cpu in ((dense, True), (conv, False)):
        maml = keras_meta.MAML(net)
        maml.compile(loss="mse")  # jit_compile="auto"
        # XLA on GPU/TPU; on CPU only where it was measured faster: the
        # batched Dense path.
        assert maml.jit_compile is (km_backend.default_jit_compile()
                                    or on_cpu)
    maml.compile(loss="mse", jit_compile=True)
    assert maml.jit_compile is True

"""Makes sure Keras runs on the TensorFlow backend before anything imports it.

keras_meta's steps use `tf.GradientTape`, `tf.function` and `tf.data`, so the
Keras backend must be TensorFlow. If `KERAS_BACKEND` is unset we set it; if a
user forced another backend we fail at import with a message that says so,
rather than failing later inside a training step.
"""

import os
import sys

REQUIRED_BACKEND = "tensorflow"


def ensure_tensorflow_backend():
    """Selects the TensorFlow Keras backend, or raises if another is forced.

    Raises:
        ImportError: if `KERAS_BACKEND` names another backend, or Keras was
            already imported with one.
    """
    requested = os.environ.get("KERAS_BACKEND")
    if requested is None:
        os.environ["KERAS_BACKEND"] = REQUIRED_BACKEND
    elif requested != REQUIRED_BACKEND:
        raise ImportError(
            f"keras_meta needs the TensorFlow Keras backend, but "
            f"KERAS_BACKEND={requested!r}. Unset KERAS_BACKEND or set "
            f"KERAS_BACKEND={REQUIRED_BACKEND!r} before importing keras_meta."
        )
    if "keras" in sys.modules:
        import keras

        active = keras.backend.backend()
        if active != REQUIRED_BACKEND:
            raise ImportError(
                f"keras_meta needs the TensorFlow Keras backend, but Keras was "
                f"already imported with backend {active!r}. Import keras_meta "
                f"first, or set KERAS_BACKEND={REQUIRED_BACKEND!r}."
            )


def default_jit_compile(device_types=None, strategy=None):
    """keras_meta's choice for `jit_compile="auto"`: XLA on GPU and TPU.

    On CPU the compiled graph without XLA is as fast or faster for every
    step benchmarked (`benchmarks/maml_peers.py`: the MAML sinusoid step
    ties, the conv4 step is about 20x slower under XLA, whose CPU
    convolutions are not oneDNN's), and compiles in a fraction of the time.
    Under a `MirroredStrategy` or multi-worker strategy XLA on the whole
    train step fails (cross-device variable access), so it is off there; a
    `TPUStrategy` compiles with XLA anyway.

    Args:
        device_types: the physical device types present (default: those
            TensorFlow sees).
        strategy: the `tf.distribute` strategy in use, or None (default:
            the one whose scope is entered, if any).

    Returns:
        bool.
    """
    import tensorflow as tf

    if device_types is None:
        device_types = [d.device_type for d in tf.config.list_physical_devices()]
    if strategy is None and tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    if strategy is not None:
        return False
    return any(t in ("GPU", "TPU") for t in device_types)

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

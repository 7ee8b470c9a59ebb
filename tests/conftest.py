"""Shared pytest set-up."""

import os

# Keep TensorFlow's C++ logging quiet in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_meta  # noqa: E402,F401  (selects the TensorFlow backend first)
from absl import flags  # noqa: E402

# Example scripts define absl flags; tests import them without parsing argv.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

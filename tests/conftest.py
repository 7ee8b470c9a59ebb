"""Shared pytest set-up."""

import os

# Keep TensorFlow's C++ logging quiet in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_meta  # noqa: E402,F401  (selects the TensorFlow backend first)
from absl import flags  # noqa: E402

# Example scripts define absl flags; tests import them without parsing argv.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402

OMNIGLOT_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "..", "shared", "data", "omniglot")


@pytest.fixture(scope="session")
def omniglot_dir():
    """../shared/data/omniglot, or a clean skip where the archives are absent."""
    if not os.path.exists(os.path.join(OMNIGLOT_DIR,
                                       "images_background_small1.zip")):
        pytest.skip(f"Omniglot archives not found in {OMNIGLOT_DIR}")
    return OMNIGLOT_DIR

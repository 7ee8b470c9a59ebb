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

# Integration tests: they run training scripts, subprocesses, several
# devices or the real Omniglot data. `pytest -m "not slow"` runs the fast
# unit tests alone; the README's command runs everything.
SLOW_PATHS = (
    "tests/experiments/",
    "tests/benchmarks/",
    "tests/test_distribute.py",
    "tests/models/test_omniglot_maml.py",
    "tests/meta/test_interruption.py",
)


def pytest_collection_modifyitems(config, items):
    root = str(config.rootpath)
    for item in items:
        path = os.path.relpath(str(item.path), root).replace(os.sep, "/")
        if path.startswith(SLOW_PATHS):
            item.add_marker(pytest.mark.slow)

"""Shared pytest set-up."""

import os

# Keep TensorFlow's C++ logging quiet in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_meta  # noqa: E402,F401  (selects the TensorFlow backend first)
from absl import flags  # noqa: E402

# Example scripts define absl flags; tests import them without parsing argv.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_meta.maml import meta_gradients  # noqa: E402

OMNIGLOT_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "..", "shared", "data", "omniglot")


@pytest.fixture(scope="session")
def omniglot_dir():
    """../shared/data/omniglot, or a clean skip where the archives are absent."""
    if not os.path.exists(os.path.join(OMNIGLOT_DIR,
                                       "images_background_small1.zip")):
        pytest.skip(f"Omniglot archives not found in {OMNIGLOT_DIR}")
    return OMNIGLOT_DIR

def _check_meta_gradient(maml, data, rule_only=False, eps=1e-6, rtol=1e-5,
                         atol=1e-8):
    """Asserts that `maml`'s meta-gradient on `data` matches central finite
    differences (float64 models), for the wrapped model's variables and the
    inner rule's (only the rule's with `rule_only`). Returns the numeric
    gradients, one array per variable checked."""
    _, grads, _, _ = meta_gradients.compute(maml, data)
    # Compiled once; it reads the variables, which the loop below shifts.
    meta_loss = tf.function(lambda d: meta_gradients.compute(maml, d)[0])
    variables = list(maml.model.trainable_variables) + list(
        maml.inner_optimizer_variables)
    assert len(grads) == len(variables)
    numerics = []
    checked = zip(variables, grads)
    if rule_only:
        checked = list(checked)[len(maml.model.trainable_variables):]
    for variable, grad in checked:
        base = variable.numpy()
        numeric = np.zeros_like(base)
        for index in np.ndindex(base.shape):
            for sign in (1, -1):
                shifted = base.copy()
                shifted[index] += sign * eps
                variable.assign(shifted)
                numeric[index] += sign * float(meta_loss(data))
            variable.assign(base)
        numeric /= 2 * eps
        np.testing.assert_allclose(grad.numpy(), numeric, rtol=rtol,
                                   atol=atol, err_msg=variable.path)
        numerics.append(numeric)
    return numerics


@pytest.fixture
def check_meta_gradient():
    """The finite-difference check of MAML meta-gradients, as a function."""
    return _check_meta_gradient


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

"""Shared checks of the MAML model tests."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_meta.maml import meta_gradients


def _sinusoid_mlp(hidden, seed=0):
    """The MAML paper's sinusoid network 1-h-h-1 (ReLU), seeded."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((1,)),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dense(1),
    ])


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


@pytest.fixture
def sinusoid_mlp():
    """`sinusoid_mlp(hidden)`: the paper's seeded 1-h-h-1 ReLU network."""
    return _sinusoid_mlp

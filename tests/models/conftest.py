"""Shared checks of the MAML model tests."""

import keras
import pytest


def _sinusoid_mlp(hidden, seed=0):
    """The MAML paper's sinusoid network 1-h-h-1 (ReLU), seeded."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((1,)),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dense(1),
    ])


@pytest.fixture
def sinusoid_mlp():
    """`sinusoid_mlp(hidden)`: the paper's seeded 1-h-h-1 ReLU network."""
    return _sinusoid_mlp

"""Shared pieces of the learner tests: tiny episodes and models."""

import keras
import numpy as np
import pytest


def blob_episodes(tasks=4, ways=3, shots=2, queries=2, dim=4, seed=0,
                  spread=0.3):
    """Classification episodes of Gaussian blobs: each task draws `ways`
    random class centers in `dim` dimensions."""
    rng = np.random.RandomState(seed)
    centers = 2.0 * rng.randn(tasks, ways, dim).astype("float32")
    per_class = shots + queries
    labels = np.tile(np.repeat(np.arange(ways), per_class), (tasks, 1))
    x = np.take_along_axis(centers, labels[..., None], axis=1)
    x = x + spread * rng.randn(*x.shape).astype("float32")
    x = x.reshape(tasks, ways, per_class, dim)
    y = labels.reshape(tasks, ways, per_class).astype("int32")
    return {
        "support_x": x[:, :, :shots].reshape(tasks, -1, dim),
        "support_y": y[:, :, :shots].reshape(tasks, -1),
        "query_x": x[:, :, shots:].reshape(tasks, -1, dim),
        "query_y": y[:, :, shots:].reshape(tasks, -1),
    }


def mlp(inputs=4, hidden=8, outputs=3, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((inputs,)),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dense(outputs),
    ])


@pytest.fixture
def episodes():
    """`episodes(**kwargs)`: blob episodes (see `blob_episodes`)."""
    return blob_episodes


@pytest.fixture
def make_mlp():
    """`make_mlp(inputs, hidden, outputs, seed)`: a seeded ReLU MLP."""
    return mlp

"""`LearnedOptimizer(ema_window_fraction=)`: a weight average whose window
grows with the run (`weight_average.GrowingMomentum`)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta
from keras_meta.optimizers import weight_average


def test_growing_momentum_values():
    spec = weight_average.GrowingMomentum(0.99, 0.1)
    got = [float(weight_average._momentum(spec, tf.constant(t), tf.float32))
           for t in (0, 1, 500, 1000, 2000, 5000)]
    # 0 at the first step (the average starts at the weights), then 0.99
    # until the window of 100 steps is a tenth of the steps taken.
    np.testing.assert_allclose(got, [0, 0.99, 0.99, 0.99, 0.995, 0.998],
                               rtol=1e-6)


def _variables():
    return [keras.Variable(np.linspace(-1, 1, 6, dtype="float32")
                           .reshape(2, 3)),
            keras.Variable(np.array([0.5, -0.25, 1.0], "float32"))]


def _run(steps=12, **kwargs):
    """`steps` steps of `apply` on fixed gradients: the weights after each
    step and the final averages."""
    variables = _variables()
    optimizer = keras_meta.LearnedOptimizer(weights="normalized",
                                            use_ema=True, **kwargs)
    rng = np.random.default_rng(0)
    history = []
    for _ in range(steps):
        grads = [tf.constant(rng.normal(size=v.shape), tf.float32)
                 for v in variables]
        optimizer.apply(grads, variables)
        history.append([v.numpy() for v in variables])
    averages = [a.numpy() for a in weight_average.averaged_values(
        optimizer, variables)]
    return history, averages, optimizer


@pytest.mark.parametrize("base,fraction", [(0.5, 0.5), (0.75, 0.5)])
def test_average_follows_the_growing_window(base, fraction):
    history, averages, _ = _run(ema_momentum=base,
                                ema_window_fraction=fraction,
                                compact_ema=False)
    expected = [np.copy(w) for w in history[0]]  # momentum 0 at step 0
    for step, weights in enumerate(history[1:], start=1):
        m = max(base, 1.0 - 1.0 / (fraction * step))
        expected = [m * a + (1 - m) * w for a, w in zip(expected, weights)]
    for got, want in zip(averages, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The window grew: the plain average (momentum `base` throughout)
    # ends elsewhere.
    plain = _run(ema_momentum=base, compact_ema=False)[1]
    assert max(np.max(np.abs(a - b)) for a, b in zip(plain, averages)) > 1e-4


def test_compact_average_follows_the_same_window():
    kwargs = dict(ema_momentum=0.5, ema_window_fraction=0.5)
    history, exact, _ = _run(compact_ema=False, **kwargs)
    _, compact, _ = _run(compact_ema=True, **kwargs)
    for got, want, w in zip(compact, exact, history[-1]):
        # bfloat16 offsets: within a few percent of the average's drift.
        assert np.all(np.abs(got - want) <= 0.05 * np.abs(want - w) + 1e-6)


def _fit(**kwargs):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, "relu"),
                              keras.layers.Dense(1)])
    model.compile(keras_meta.LearnedOptimizer(**kwargs), "mse")
    x = np.random.default_rng(1).normal(size=(64, 4)).astype("float32")
    model.fit(x, x.sum(axis=1, keepdims=True), batch_size=16, epochs=5,
              verbose=0, shuffle=False)
    return model


def test_default_window_is_unchanged_until_it_would_grow_and_saves(tmp_path):
    # With 0.99 and 0.1 the window starts to grow at step 1,000: a 20-step
    # fit is bitwise the default's, weights and offsets.
    plain, grown = _fit(), _fit(ema_window_fraction=0.1)
    for a, b in zip(plain.optimizer.variables, grown.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    path = str(tmp_path / "m.keras")
    grown.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.ema_window_fraction == 0.1
    assert loaded.optimizer.get_config()["ema_window_fraction"] == 0.1


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, True, "0.1", float("nan")])
def test_bad_window_fractions_are_refused(bad):
    with pytest.raises(ValueError, match="`ema_window_fraction` must be None"):
        keras_meta.LearnedOptimizer(ema_window_fraction=bad)


def test_window_needs_an_average():
    with pytest.raises(ValueError, match="needs use_ema=True"):
        keras_meta.LearnedOptimizer(weights="normalized",
                                    ema_window_fraction=0.1)

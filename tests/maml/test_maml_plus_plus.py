"""MAML++'s options (per-step batch norm, derivative-order annealing, the
cosine meta learning rate) and the uniform multi-step loss."""

import math

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_meta
from keras_meta.maml import meta_gradients
from keras_meta.maml import multi_step_loss


def net(dtype="float32", batch_norm=True, seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((1,), dtype=dtype),
              keras.layers.Dense(4, activation="tanh", dtype=dtype,
                                 name="body")]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization(dtype=dtype, name="bn"))
    layers.append(keras.layers.Dense(1, dtype=dtype, name="head"))
    return keras.Sequential(layers)


def make(dtype="float32", batch_norm=True, **kwargs):
    options = dict(inner_learning_rate=0.1, inner_steps=2,
                   multi_step_loss_anneal_steps=4,
                   per_step_bn_statistics=True, per_step_bn_weights=True)
    maml = keras_meta.MAMLPlusPlus(net(dtype, batch_norm),
                                   **{**options, **kwargs})
    maml.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return maml


def episode(dtype="float32", seed=0):
    data = next(iter(keras_meta.data.sinusoid(
        shots=4, queries=5, meta_batch_size=2, seed=seed)))
    return {k: tf.cast(v, dtype) for k, v in data.items()}


def cosine(lr, t, steps, alpha):
    t = min(t, steps)
    return lr * (alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * t
                                                            / steps)))


def test_per_step_batch_norm_cosine_rate_and_save_load(tmp_path):
    """One model through training, adapt, the schedule and a round trip."""
    maml = make(cosine_decay_steps=10, cosine_decay_alpha=0.1)
    plan = maml._step_batch_norm
    bn = maml.model.get_layer("bn")
    # gamma and beta of the layer are neither adapted nor meta-trained.
    assert len(maml.adapted_variables) == 4
    assert [tuple(w.shape) for w in plan.weights] == [(2, 4), (2, 4)]
    assert len(maml._meta_variables()) == 6 + 4 + 2

    stream = tf.data.Dataset.from_tensors(episode()).repeat()
    maml.fit(stream, steps_per_epoch=3, verbose=0)
    for weight, start in zip(plan.weights, (1.0, 0.0)):
        rows = weight.numpy()
        # Each step's row got its own meta-gradients.
        assert not np.allclose(rows, start) and not np.allclose(rows[0],
                                                                rows[1])
    np.testing.assert_array_equal(bn.gamma.numpy(), np.ones(4))
    for stats, own in zip(plan.statistics, (bn.moving_mean,
                                            bn.moving_variance)):
        rows = stats.numpy()
        assert not np.allclose(rows[0], rows[1])
        # The layer's own statistics are the last step's.
        np.testing.assert_allclose(own.numpy(), rows[-1], rtol=1e-6)
    data = episode(seed=1)
    adapted = maml.adapt(data["support_x"][0], data["support_y"][0])
    np.testing.assert_array_equal(adapted.get_layer("bn").gamma.numpy(),
                                  plan.weights[0].numpy()[1])

    # The meta learning rate follows the cosine, by optimizer step.
    for t in (0, 3, 10, 14):
        maml.optimizer.iterations.assign(t)
        np.testing.assert_allclose(float(maml.optimizer.learning_rate),
                                   cosine(0.01, t, 10, 0.1), rtol=1e-6)
    maml.optimizer.iterations.assign(3)

    path = str(tmp_path / "plus.keras")
    maml.save(path)
    loaded = keras.models.load_model(path)
    for option in ("per_step_bn_statistics", "per_step_bn_weights",
                   "first_order_steps", "cosine_decay_steps",
                   "cosine_decay_alpha"):
        assert getattr(loaded, option) == getattr(maml, option), option
    assert [v.name for v in loaded.weights] == [v.name for v in maml.weights]
    for a, b in zip(maml.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(float(loaded.optimizer.learning_rate),
                               cosine(0.01, 3, 10, 0.1), rtol=1e-6)
    np.testing.assert_allclose(loaded.task_losses(data).numpy(),
                               maml.task_losses(data).numpy(), rtol=1e-6)

    # A config without the options (an older file) builds plain MAML++.
    config = maml.get_config()
    for option in ("per_step_bn_statistics", "per_step_bn_weights",
                   "first_order_steps", "cosine_decay_steps",
                   "cosine_decay_alpha"):
        config.pop(option)
    older = keras_meta.MAMLPlusPlus.from_config(config)
    assert older._step_batch_norm is None
    assert len(older._meta_variables()) == 6 + 6


def test_per_step_batch_norm_meta_gradient_matches_finite_differences():
    """Second order through the per-step weights and exact moments."""
    maml = make("float64")
    maml.optimizer.iterations.assign(1)  # mid-anneal for the MSL weights
    data = episode("float64")
    _, grads, _, _ = meta_gradients.compute(maml, data)
    meta_loss = tf.function(lambda d: meta_gradients.compute(maml, d)[0])
    plan = maml._step_batch_norm
    for weight, grad in zip(plan.weights, grads[-2:]):
        base = weight.numpy()
        numeric = np.zeros_like(base)
        for index in np.ndindex(base.shape):
            for sign in (1, -1):
                shifted = base.copy()
                shifted[index] += sign * 1e-6
                weight.assign(shifted)
                numeric[index] += sign * float(meta_loss(data))
            weight.assign(base)
        np.testing.assert_allclose(grad.numpy(), numeric / 2e-6, rtol=1e-5,
                                   atol=1e-8)
        assert np.abs(numeric[1]).max() > 0  # step 2's row has a gradient


def test_derivative_order_switches_exactly_at_the_set_point():
    """Before step N the compiled step's meta-gradient is first-order
    MAML's, from step N on second-order MAML's."""
    maml = make(batch_norm=False, first_order_steps=2)
    data = episode()
    step = tf.function(
        lambda d: meta_gradients.compute(maml, d, maml._second_order())[1])
    for iteration, order in ((1, False), (2, True)):
        maml.optimizer.iterations.assign(iteration)  # also the MSL weights
        want = meta_gradients.compute(maml, data, order)[1]
        other = meta_gradients.compute(maml, data, not order)[1]
        assert max(np.abs((a - b).numpy()).max()
                   for a, b in zip(want, other)) > 1e-3
        for got, expected in zip(step(data), want):
            np.testing.assert_allclose(got.numpy(), expected.numpy(),
                                       rtol=1e-6, atol=1e-7)
    # first_order=True stays first order.
    assert keras_meta.MAMLPlusPlus(net(batch_norm=False), first_order=True,
                                   first_order_steps=2)._second_order() is False


def test_uniform_multi_step_loss_is_the_mean_over_steps():
    maml = keras_meta.MAML(net(batch_norm=False), inner_learning_rate=0.1,
                           inner_steps=3, multi_step_loss="uniform")
    maml.compile(loss="mse")
    meta_loss, _, outputs, _ = meta_gradients.compute(maml, episode())
    np.testing.assert_allclose(
        meta_loss.numpy(), outputs["losses"][:, 1:].numpy().mean(),
        rtol=1e-6)
    assert multi_step_loss.resolve("annealed") is True
    assert maml.get_config()["multi_step_loss"] == "uniform"
    # Weights: a distribution over the step counts 1..3.
    maml = keras_meta.MAML(maml.model, inner_learning_rate=0.1,
                           inner_steps=3, multi_step_loss=[2, 0, 2])
    maml.compile(loss="mse")
    meta_loss, _, outputs, _ = meta_gradients.compute(maml, episode())
    losses = outputs["losses"].numpy()
    np.testing.assert_allclose(
        meta_loss.numpy(), (losses[:, 1] + losses[:, 3]).mean() / 2,
        rtol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(first_order_steps=-1), "`first_order_steps` must be None or an"),
    (dict(cosine_decay_steps=0), "`cosine_decay_steps` must be an int"),
    (dict(cosine_decay_alpha=2.0), "`cosine_decay_alpha` must be a number"),
    (dict(multi_step_loss="sometimes"), "`multi_step_loss` must be False"),
    (dict(multi_step_loss=[1.0, 2.0]), "one non-negative finite number per"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_meta.MAMLPlusPlus(net(batch_norm=False), **kwargs)

"""keras_meta.Reptile: the outer update, fresh inner state, adapt, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta


def linear_tasks(tasks=3, n=4, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(tasks, 2 * n, 2).astype("float32")
    w = rng.randn(tasks, 2, 1).astype("float32")
    y = x @ w + 0.5
    return {"support_x": x[:, :n], "support_y": y[:, :n],
            "query_x": x[:, n:], "query_y": y[:, n:]}


def linear_model():
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(
        1, kernel_initializer=keras.initializers.Constant(0.3),
        bias_initializer=keras.initializers.Constant(-0.2))])


def test_outer_update_is_the_reptile_formula_with_sgd():
    alpha, epsilon, steps = 0.1, 0.5, 3
    reptile = keras_meta.Reptile(
        linear_model(), inner_optimizer=keras.optimizers.SGD(alpha),
        inner_steps=steps)
    reptile.compile(optimizer=keras.optimizers.SGD(epsilon), loss="mse")
    episode = linear_tasks()
    w0, b0 = [v.numpy().astype(np.float64) for v in reptile.model.weights]
    adapted = []
    for t in range(3):
        x = np.concatenate([episode["support_x"][t], episode["query_x"][t]])
        y = np.concatenate([episode["support_y"][t], episode["query_y"][t]])
        w, b = w0.copy(), b0.copy()
        for _ in range(steps):
            residual = x @ w + b - y  # d mean((xw + b - y)^2)
            w, b = (w - alpha * 2 * x.T @ residual / len(x),
                    b - alpha * 2 * residual.mean(0))
        adapted.append((w, b))
    expected_w = w0 + epsilon * (np.mean([a[0] for a in adapted], 0) - w0)
    expected_b = b0 + epsilon * (np.mean([a[1] for a in adapted], 0) - b0)
    reptile.train_on_batch(episode)
    w, b = [v.numpy() for v in reptile.model.weights]
    np.testing.assert_allclose(w, expected_w, rtol=1e-5)
    np.testing.assert_allclose(b, expected_b, rtol=1e-5)


def test_each_task_starts_with_a_fresh_keras_optimizer(tmp_path):
    reptile = keras_meta.Reptile(linear_model(), inner_optimizer="adam",
                                 inner_steps=4)
    reptile.compile(optimizer="sgd", loss="mse")
    episode = linear_tasks()
    results = reptile.task_results(episode)
    for t in (2,):  # not the first task: its optimizer state is fresh
        net = linear_model()
        optimizer = keras.optimizers.Adam()
        for _ in range(4):
            with tf.GradientTape() as tape:
                loss = keras.losses.mean_squared_error(
                    episode["support_y"][t], net(episode["support_x"][t]))
                loss = tf.reduce_mean(loss)
            optimizer.apply(tape.gradient(loss, net.trainable_variables),
                            net.trainable_variables)
        adapted = reptile.adapt(episode["support_x"][t],
                                episode["support_y"][t])
        for a, b in zip(adapted.weights, net.weights):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5)
        np.testing.assert_allclose(
            adapted.predict(episode["query_x"][t], verbose=0),
            results["predictions"][t], rtol=1e-5)
    assert results["losses"].shape == (3, 5)
    # The meta-weights are untouched by adaptation.
    np.testing.assert_allclose(reptile.model.weights[0].numpy(), 0.3)
    reptile.save(tmp_path / "r.keras")
    loaded = keras.models.load_model(tmp_path / "r.keras")
    assert isinstance(loaded.inner_optimizer, keras.optimizers.Adam)
    np.testing.assert_allclose(loaded.task_results(episode)["predictions"],
                               results["predictions"], rtol=1e-6)


def test_training_lowers_the_held_out_loss(episodes):
    keras.utils.set_random_seed(0)
    net = keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(8),
        keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.Dense(3)])
    reptile = keras_meta.Reptile(
        net, inner_optimizer=keras.optimizers.SGD(0.3), inner_steps=3)
    reptile.compile(optimizer=keras.optimizers.SGD(0.5),
                    metrics=["accuracy"])
    train = tf.data.Dataset.from_tensors(episodes(tasks=4)).repeat()
    held_out = tf.data.Dataset.from_tensors(episodes(tasks=8, seed=1))
    first = reptile.evaluate(held_out, return_dict=True, verbose=0)
    reptile.fit(train, steps_per_epoch=30, verbose=0)
    last = reptile.evaluate(held_out, return_dict=True, verbose=0)
    assert last["loss"] < first["loss"], (first, last)
    # Moving statistics: the task mean of the adapted copies'.
    moving_mean = net.get_layer(index=1).moving_mean.numpy()
    assert np.all(moving_mean != 0) and np.all(np.isfinite(moving_mean))


def test_bad_arguments_and_data_are_refused(make_mlp):
    with pytest.raises(ValueError, match="inner_steps"):
        keras_meta.Reptile(make_mlp(), inner_steps=0)
    with pytest.raises(ValueError, match="Could not interpret"):
        keras_meta.Reptile(make_mlp(), inner_optimizer="no_such_optimizer")
    reptile = keras_meta.Reptile(linear_model())
    with pytest.raises(ValueError, match="compile"):
        reptile.adapt(np.zeros((3, 2)), np.zeros((3, 1)))
    reptile.compile(loss="mse")
    with pytest.raises(ValueError, match="same number|without a task axis"):
        reptile.adapt(np.zeros((3, 2)), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="non-finite"):
        reptile.adapt(np.full((3, 2), np.inf), np.zeros((3, 1)))

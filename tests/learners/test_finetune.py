"""keras_meta.FineTune: pretraining, per-episode heads, adapt, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta


def pooled(classes=6, n=240, dim=4, seed=0):
    rng = np.random.RandomState(seed)
    centers = 2.0 * rng.randn(classes, dim).astype("float32")
    y = rng.randint(0, classes, n).astype("int32")
    return centers, centers[y] + 0.3 * rng.randn(n, dim).astype("float32"), y


def episode_of(centers, tasks=3, ways=3, shots=2, queries=3, seed=1):
    rng = np.random.RandomState(seed)
    chosen = np.stack([rng.choice(len(centers), ways, replace=False)
                       for _ in range(tasks)])
    labels = np.tile(np.repeat(np.arange(ways), shots + queries), (tasks, 1))
    x = centers[np.take_along_axis(chosen, labels, 1)]
    x = (x + 0.3 * rng.randn(*x.shape)).astype("float32")
    x = x.reshape(tasks, ways, shots + queries, -1)
    y = labels.reshape(tasks, ways, -1).astype("int32")
    flat = lambda a: a.reshape(tasks, ways * a.shape[2], *a.shape[3:])  # noqa
    return {"support_x": flat(x[:, :, :shots]),
            "support_y": flat(y[:, :, :shots]),
            "query_x": flat(x[:, :, shots:]),
            "query_y": flat(y[:, :, shots:])}


def backbone(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)),
                             keras.layers.Dense(16, activation="relu")])


def test_pretrain_then_fit_heads_per_episode(tmp_path):
    centers, x, y = pooled()
    finetune = keras_meta.FineTune(backbone(), 6, head_steps=10,
                                   head_learning_rate=0.3,
                                   normalize_features=True)
    finetune.compile(optimizer=keras.optimizers.Adam(1e-2),
                     metrics=["accuracy"])
    history = finetune.fit(x, y, batch_size=32, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    episode = episode_of(centers)
    logs = finetune.evaluate(tf.data.Dataset.from_tensors(episode),
                             return_dict=True, verbose=0)
    assert logs["accuracy"] > 0.8, logs
    results = finetune.task_results(episode)
    assert results["losses"].shape == (3, 11)
    # A zero head starts at log(ways); fitting lowers the query loss.
    np.testing.assert_allclose(results["losses"][:, 0], np.log(3), rtol=1e-5)
    assert np.all(results["losses"][:, -1] < results["losses"][:, 0])
    adapted = finetune.adapt(episode["support_x"][1], episode["support_y"][1])
    np.testing.assert_allclose(
        adapted.predict(episode["query_x"][1], verbose=0),
        results["predictions"][1], rtol=1e-5, atol=1e-5)
    adapted.save(tmp_path / "a.keras")
    finetune.save(tmp_path / "f.keras")
    np.testing.assert_allclose(
        keras.models.load_model(tmp_path / "a.keras").predict(
            episode["query_x"][1], verbose=0),
        results["predictions"][1], rtol=1e-5, atol=1e-5)
    loaded = keras.models.load_model(tmp_path / "f.keras")
    np.testing.assert_allclose(loaded.predict(x[:8], verbose=0),
                               finetune.predict(x[:8], verbose=0), rtol=1e-6)
    assert loaded.head_steps == 10 and loaded.normalize_features


def test_regression_fine_tunes_the_pretrained_head():
    finetune = keras_meta.FineTune(backbone(), 1, head_steps=5,
                                   head_optimizer="sgd")
    finetune.compile(loss="mse")
    rng = np.random.RandomState(0)
    x = rng.randn(2, 10, 4).astype("float32")
    episode = {"support_x": x[:, :5], "support_y": x[:, :5, :1],
               "query_x": x[:, 5:], "query_y": x[:, 5:, :1]}
    results = finetune.task_results(episode, steps=5)
    # Column 0 is the pretrained model's query loss.
    pretrained = finetune.predict(x[:, 5:].reshape(-1, 4), verbose=0)
    expected = ((pretrained.reshape(2, 5, 1) - x[:, 5:, :1]) ** 2).mean(
        axis=(1, 2))
    np.testing.assert_allclose(results["losses"][:, 0], expected, rtol=1e-5)


def test_bad_arguments_and_data_are_refused():
    with pytest.raises(ValueError, match="head_optimizer"):
        keras_meta.FineTune(backbone(), 3, head_optimizer="lbfgs")
    with pytest.raises(ValueError, match="head_learning_rate"):
        keras_meta.FineTune(backbone(), 3, head_learning_rate=-1.0)
    finetune = keras_meta.FineTune(backbone(), 3)
    finetune.compile()
    centers, _, _ = pooled()
    episode = episode_of(centers)
    with pytest.raises(ValueError, match="not on episodes"):
        finetune.fit(tf.data.Dataset.from_tensors(episode), verbose=0)
    with pytest.raises(ValueError, match="0..N-1"):
        finetune.adapt(episode["support_x"][0], episode["support_y"][0] + 2)

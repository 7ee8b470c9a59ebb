"""NonFiniteGuard: skipped non-finite steps are counted, and too many in a
row stop training with an error that names the step and the quantity."""

import glob

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_meta
from keras_meta import callbacks
from keras_meta.errors import NonFiniteError


def linear_net():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])


def episode(nan_query=False):
    data = next(iter(keras_meta.data.sinusoid(shots=5, queries=5,
                                              meta_batch_size=2, seed=0)))
    if nan_query:
        data["query_y"] = tf.fill(data["query_y"].shape, np.nan)
    return data


def compiled_maml(**kwargs):
    maml = keras_meta.MAML(linear_net(), **kwargs)
    maml.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return maml


@pytest.mark.parametrize("kwargs, data, quantity", [
    (dict(inner_learning_rate=0.01), episode(nan_query=True),
     "query loss before adaptation"),
    # A linear model with a huge inner rate: the adapted weights overflow.
    (dict(inner_learning_rate=1e30, inner_steps=3), episode(),
     "query loss after adaptation"),
])
def test_maml_stops_after_consecutive_skips(kwargs, data, quantity):
    maml = compiled_maml(max_consecutive_skips=3, **kwargs)
    before = [w.numpy() for w in maml.model.weights]
    with pytest.raises(NonFiniteError, match=f"at step 3: the {quantity}"
                       ) as info:
        maml.fit(tf.data.Dataset.from_tensors(data).repeat(),
                 steps_per_epoch=10, epochs=1, verbose=0)
    assert info.value.step == 3
    assert info.value.quantity.startswith(quantity)
    assert int(maml.skipped_steps.numpy()) == 3
    for a, b in zip(before, maml.model.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_maml_count_restarts_after_a_good_step():
    maml = compiled_maml(max_consecutive_skips=2)
    good, bad = episode(), episode(nan_query=True)
    stream = tf.data.Dataset.from_tensor_slices(
        {k: tf.stack([good[k], bad[k]]) for k in good}).repeat()
    history = maml.fit(stream, steps_per_epoch=8, epochs=1, verbose=0)
    assert history.history["skipped_steps"] == [4]
    assert int(maml.optimizer.iterations.numpy()) == 4


def test_maml_guard_can_be_turned_off():
    maml = compiled_maml(max_consecutive_skips=None)
    data = episode(nan_query=True)
    maml.fit(tf.data.Dataset.from_tensors(data).repeat(), steps_per_epoch=5,
             verbose=0)
    assert int(maml.skipped_steps.numpy()) == 5


def test_learned_optimizer_stops_after_consecutive_skips():
    model = linear_net()
    model.compile(optimizer=keras_meta.LearnedOptimizer(), loss="mse")
    x = np.full((8, 1), np.nan, np.float32)
    with pytest.raises(NonFiniteError, match="at step 4: the gradient or "
                       "learned update"):
        model.fit(x, x, batch_size=2, epochs=3, verbose=0,
                  callbacks=[callbacks.NonFiniteGuard(4)])
    assert model.optimizer.consecutive_nonfinite_steps == 4
    assert np.all(np.isfinite(model.get_weights()[0]))


def test_learned_optimizer_skip_count_reaches_the_logs():
    model = linear_net()
    model.compile(optimizer=keras_meta.LearnedOptimizer(), loss="mse")
    x = np.ones((4, 1), np.float32)
    x[0] = np.nan
    history = model.fit(x, x, batch_size=2, epochs=2, verbose=0,
                        shuffle=False,
                        callbacks=[callbacks.NonFiniteGuard(2)])
    # One bad batch per epoch skips both variables (kernel and bias).
    assert history.history["skipped_steps"] == [2, 4]
    assert model.optimizer.consecutive_nonfinite_steps == 0


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_guard_rejects_a_bad_limit(value):
    with pytest.raises(ValueError, match="`max_consecutive` must be an int"):
        callbacks.NonFiniteGuard(value)


def test_tensorboard_shows_the_skip_count(tmp_path):
    maml = compiled_maml()
    good, bad = episode(), episode(nan_query=True)
    stream = tf.data.Dataset.from_tensor_slices(
        {k: tf.stack([good[k], bad[k]]) for k in good}).repeat()
    maml.fit(stream, steps_per_epoch=4, epochs=2, verbose=0,
             callbacks=[keras.callbacks.TensorBoard(str(tmp_path))])
    values = {}
    for path in glob.glob(str(tmp_path / "train" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "epoch_skipped_steps":
                    values[event.step] = float(
                        tf.make_ndarray(value.tensor))
    assert values == {0: 2.0, 1: 4.0}


def test_learned_step_size_summary_and_step_sizes(tmp_path):
    import keras_meta
    from keras_meta.optimizers import weights_io

    rng = np.random.RandomState(0)
    x = rng.randn(128, 4).astype("float32")
    y = x.sum(1, keepdims=True)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
                              keras.layers.Dense(1)])
    opt = keras_meta.LearnedOptimizer(learning_rate=0.5, weights="per_tensor")
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[
        keras_meta.callbacks.LearnedStepSizeSummary(str(tmp_path))])
    sizes = opt.step_sizes()
    assert sorted(sizes) == sorted(v.path for v in model.trainable_variables)
    phi, _ = weights_io.load_phi(weights_io.pretrained_path("per_tensor"))
    for var, offset in zip(model.trainable_variables, opt._slots["log_lr"]):
        expected = 0.5 * np.exp(phi["log_lr"] + offset.numpy())
        np.testing.assert_allclose(sizes[var.path], expected, rtol=1e-5)
    # The rule moved the step sizes apart during training.
    assert len({round(v, 9) for v in sizes.values()}) > 1
    tags = set()
    for event in tf.compat.v1.train.summary_iterator(
            str(next(tmp_path.glob("events.out*")))):
        tags.update(v.tag for v in event.summary.value)
    assert {"learned_optimizer/step_size/" + p.replace("/", "_")
            for p in sizes} <= tags
    with pytest.raises(ValueError, match="per-tensor rule"):
        keras_meta.LearnedOptimizer(weights="coordinatewise").step_sizes()

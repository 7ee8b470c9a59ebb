"""Hostile inputs to the library (issue 19): adapt(), predict() and
evaluate() as strict as fit(), non-finite learning rates, a truthful
NonFiniteError, atomic writes on a full disk, and MAML under a strategy
whose variables are not distributed by design."""

import errno
import os

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_meta
from keras_meta import saving
from keras_meta.errors import NonFiniteError
from keras_meta.meta import problems as problems_lib
from keras_meta.meta import trainer as trainer_lib


def regressor():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])


def classifier(outputs=3):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(outputs)])


def compiled(net, loss="mse", optimizer=None):
    maml = keras_meta.MAML(net, inner_learning_rate=0.01)
    maml.compile(optimizer=optimizer or keras.optimizers.SGD(0.01),
                 loss=loss, jit_compile=False)
    return maml


def sparse_maml():
    return compiled(classifier(), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))


def support(n=6, ways=3, features=2):
    x = np.random.default_rng(0).normal(size=(n, features)).astype("float32")
    y = (np.arange(n) % ways).astype("int32")
    return x, y


def sinusoid(**changes):
    data = next(iter(keras_meta.data.sinusoid(shots=5, queries=5,
                                              meta_batch_size=2, seed=0)))
    data = {k: v.numpy() for k, v in data.items()}
    data.update(changes)
    return data


def with_nan(array):
    array = np.array(array)
    array.flat[0] = np.nan
    return array


# ------------------------------------------------ adapt() as strict as fit()


ADAPT_CASES = {
    "label past the last class": (
        sparse_maml, lambda: (support()[0], np.array([0, 1, 2, 0, 1, 7])),
        r"adapt\(\) support set: labels must be in 0..2 .* from 0 to 7"),
    "negative label": (
        sparse_maml, lambda: (support()[0], np.array([0, 1, 2, 0, 1, -1])),
        "labels must be in 0..2 .* from -1 to 2"),
    "NaN in support_x": (
        sparse_maml, lambda: (with_nan(support()[0]), support()[1]),
        r"'support_x' holds 1 non-finite value\(s\)"),
    "inf in regression targets": (
        lambda: compiled(regressor()),
        lambda: (np.zeros((4, 1), "float32"),
                 np.array([[0.0], [np.inf], [0.0], [1.0]], "float32")),
        r"'support_y' holds 1 non-finite value\(s\)"),
    "empty support set": (
        sparse_maml, lambda: (np.zeros((0, 2), "float32"),
                              np.zeros((0,), "int32")),
        "'support_x' holds no examples"),
    "regression targets that would broadcast": (
        lambda: compiled(regressor()),
        lambda: (np.zeros((4, 1), "float32"), np.zeros((4,), "float32")),
        r"outputs \[1\] per example but the targets are \[\]"),
    "regression targets of another width": (
        lambda: compiled(regressor()),
        lambda: (np.zeros((4, 1), "float32"), np.zeros((4, 3), "float32")),
        r"outputs \[1\] per example but the targets are \[3\]"),
    "fewer ways than outputs": (
        sparse_maml, lambda: (support()[0], np.array([0, 1, 0, 1, 0, 1])),
        "2-way .* but the model has 3 outputs"),
}


@pytest.mark.parametrize("case", sorted(ADAPT_CASES))
def test_adapt_refuses_what_fit_refuses(case):
    make, data, message = ADAPT_CASES[case]
    maml = make()
    x, y = data()
    with pytest.raises(ValueError, match=message):
        maml.adapt(x, y)


def test_adapt_of_a_valid_support_set_still_adapts():
    maml = sparse_maml()
    x, y = support()
    adapted = maml.adapt(x, y, steps=1)
    moved = [not np.array_equal(a.numpy(), b.numpy()) for a, b in
             zip(adapted.trainable_variables, maml.model.trainable_variables)]
    assert any(moved)


def test_predict_refuses_non_finite_support_and_empty_queries():
    maml = compiled(regressor())
    bad = sinusoid(support_y=with_nan(sinusoid()["support_y"]))
    with pytest.raises(ValueError, match="predict data: 'support_y' holds 1"):
        maml.predict(tf.data.Dataset.from_tensors(bad), verbose=0)
    empty = sinusoid(query_x=np.zeros((2, 0, 1), "float32"),
                     query_y=np.zeros((2, 0, 1), "float32"))
    with pytest.raises(ValueError, match="'query_x' holds no examples"):
        maml.predict(tf.data.Dataset.from_tensors(empty), verbose=0)


def test_evaluate_checks_labels_like_fit():
    maml = sparse_maml()
    x, _ = support(6)
    y = np.array([0, 1, 2, 0, 1, 5], "int32")
    episode = {"support_x": x[None], "support_y": y[None],
               "query_x": x[None], "query_y": y[None]}
    with pytest.raises(ValueError, match="evaluate data: labels must be in"):
        maml.evaluate(tf.data.Dataset.from_tensors(episode), verbose=0)


def test_fit_still_skips_a_non_finite_step_instead_of_refusing():
    maml = compiled(regressor())
    data = sinusoid(query_y=with_nan(sinusoid()["query_y"]))
    history = maml.fit(tf.data.Dataset.from_tensors(data), verbose=0)
    assert history.history["skipped_steps"] == [1]


# ---------------------------------------------- non-finite learning rates


@pytest.mark.parametrize("rate", [np.inf, np.nan, -np.inf])
def test_maml_refuses_a_non_finite_meta_learning_rate(rate):
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        compiled(regressor(), optimizer=keras.optimizers.Adam(rate))


def test_maml_refuses_a_schedule_that_starts_negative():
    # The check reads the schedule's value at the optimizer's current
    # step, as Keras's `learning_rate` gives it.
    schedule = keras.optimizers.schedules.ExponentialDecay(-1e-3, 100, 0.5)
    with pytest.raises(ValueError, match="got -0.001"):
        compiled(regressor(), optimizer=keras.optimizers.Adam(schedule))


@pytest.mark.parametrize("rate", [float("inf"), float("nan")])
def test_meta_trainer_refuses_a_non_finite_meta_learning_rate(rate):
    problem = problems_lib.make_problem("quadratic")
    with pytest.raises(ValueError, match="meta_lr must be a finite number"):
        trainer_lib.MetaTrainer([problem], meta_lr=rate, unroll=2, horizon=4)


def test_non_finite_error_says_when_the_weights_are_not_finite():
    """Weights that are already non-finite (as an overflowing update leaves
    them): the guard must not claim they hold their last finite values."""
    maml = keras_meta.MAML(regressor(), inner_learning_rate=0.01,
                           max_consecutive_skips=2)
    maml.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse",
                 jit_compile=False)
    maml.model.layers[0].bias.assign([np.inf])
    stream = tf.data.Dataset.from_tensors(sinusoid()).repeat()
    with pytest.raises(NonFiniteError) as info:
        maml.fit(stream, steps_per_epoch=5, verbose=0)
    assert "weights are NOT finite" in str(info.value)
    assert "last finite values" not in str(info.value)


def test_non_finite_error_says_when_the_weights_are_finite():
    maml = keras_meta.MAML(regressor(), inner_learning_rate=0.01,
                           max_consecutive_skips=2)
    maml.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse",
                 jit_compile=False)
    data = sinusoid(query_y=with_nan(sinusoid()["query_y"]))
    with pytest.raises(NonFiniteError, match="hold their last finite values"):
        maml.fit(tf.data.Dataset.from_tensors(data).repeat(),
                 steps_per_epoch=5, verbose=0)


# ------------------------------------------------------ a full disk


def test_full_disk_gives_a_clear_error_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "ckpt.npz"

    def write(temporary):
        with open(temporary, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"Could not write .*ckpt.npz: the disk"
                       r" is full") as info:
        saving.replace_atomically(str(target), write)
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "results.json"
    saving.write_json(str(target), {"a": 1})

    def write(temporary):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match="results.json"):
        saving.replace_atomically(str(target), write)
    assert target.read_text().strip().startswith("{")
    assert os.listdir(tmp_path) == ["results.json"]


# ------------------------------------------------------ tf.distribute


@pytest.mark.parametrize("strategy", [
    lambda: tf.distribute.OneDeviceStrategy("/cpu:0"),
    tf.distribute.get_strategy,
], ids=["one_device", "default"])
def test_maml_accepts_a_model_built_in_a_non_distributing_scope(strategy):
    strategy = strategy()
    with strategy.scope():
        maml = compiled(regressor())
    data = tf.data.Dataset.from_tensors(sinusoid())
    history = maml.fit(data, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_maml_still_refuses_a_model_built_outside_a_one_device_scope():
    net = regressor()
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        with pytest.raises(ValueError, match="built outside the active "
                           "OneDeviceStrategy scope"):
            keras_meta.MAML(net)

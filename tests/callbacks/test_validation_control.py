"""keras_meta.callbacks.ValidationControl and
LearnedOptimizer.scale_learned_decay."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta
from keras_meta.callbacks import ValidationControl

X = np.ones((4, 1), "float32")
Y = np.zeros((4, 1), "float32")


def _model(optimizer):
    """y = w * x on x = 1, y = 0: the validation loss (MSE) is w**2."""
    model = keras.Sequential([keras.Input((1,)),
                              keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=optimizer, loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _control(model, **kwargs):
    control = ValidationControl((X, Y), **kwargs)
    control.set_model(model)
    control.on_train_begin()
    return control


def _set(model, w):
    model.trainable_variables[0].assign([[w]])


def _w(model):
    return float(model.trainable_variables[0].numpy()[0, 0])


def test_overfitting_lowers_rate_and_restores_best_weights():
    model = _model(keras.optimizers.SGD(0.1))
    control = _control(model, patience=2)
    for step, w in enumerate((1.0, 2.0, 3.0)):
        _set(model, w)
        entry = control.check(step, running_train_loss=0.1)
    assert [e["action"] for e in control.history] == [
        None, None, "learning_rate+restore"]
    assert [e["val_loss"] for e in control.history] == pytest.approx(
        [1.0, 4.0, 9.0])
    assert entry["learning_rate"] == pytest.approx(0.05)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)
    assert _w(model) == 1.0


def test_non_finite_validation_loss_returns_to_the_best_weights():
    model = _model(keras.optimizers.SGD(0.1))
    control = _control(model, patience=3)
    _set(model, 1.0)
    control.check(0, running_train_loss=1.0)
    _set(model, float("nan"))
    entry = control.check(1, running_train_loss=1.0)
    assert entry["action"] == "learning_rate+restore"
    assert _w(model) == 1.0
    fresh = _control(_model(keras.optimizers.SGD(0.1)))
    _set(fresh.model, float("inf"))
    with pytest.raises(FloatingPointError, match="before any finite one"):
        fresh.check(0, running_train_loss=1.0)


def test_without_a_gap_lowers_the_learned_decay_only():
    optimizer = keras_meta.LearnedOptimizer(weights="normalized")
    model = _model(optimizer)
    kernel = optimizer.phi["mlp0/kernel"].numpy()
    control = _control(model, patience=1, decay_factor=0.25)
    _set(model, 1.0)
    control.check(0, running_train_loss=1.0)
    _set(model, 1.5)  # validation 2.25 <= 2 x training 1.5: no gap
    control.check(1, running_train_loss=1.5)
    assert control.history[-1]["action"] == "decay"
    scaled = optimizer.phi["mlp0/kernel"].numpy()
    np.testing.assert_array_equal(scaled[:-1], kernel[:-1])
    np.testing.assert_allclose(scaled[-1], 0.25 * kernel[-1], rtol=1e-6)
    assert float(optimizer.learning_rate) == 1.0
    assert _w(model) == 1.5


def test_decay_factor_zero_turns_the_learned_decay_off():
    optimizer = keras_meta.LearnedOptimizer(weights="normalized")
    model = _model(optimizer)
    control = _control(model, patience=1)  # decay_factor=0 by default
    _set(model, 1.0)
    control.check(0, running_train_loss=1.0)
    control.check(1, running_train_loss=1.0)
    assert control.history[-1]["action"] == "decay"
    assert not np.any(optimizer.phi["mlp0/kernel"].numpy()[-1])


def test_without_a_gap_other_optimizers_lower_the_rate_in_place():
    model = _model(keras.optimizers.Adam(1e-2))
    control = _control(model, patience=1)
    _set(model, 1.0)
    control.check(0, running_train_loss=1.0)
    _set(model, 1.2)
    control.check(1, running_train_loss=1.44)
    assert control.history[-1]["action"] == "learning_rate"
    assert float(model.optimizer.learning_rate) == pytest.approx(5e-3)
    assert _w(model) == pytest.approx(1.2)


def test_improving_validation_loss_changes_nothing():
    model = _model(keras.optimizers.SGD(0.1))
    control = _control(model, patience=1)
    for step, w in enumerate((3.0, 2.0, 1.0, 0.5)):
        _set(model, w)
        control.check(step, running_train_loss=1e-6)
    assert [e["action"] for e in control.history] == [None] * 4
    assert float(model.optimizer.learning_rate) == pytest.approx(0.1)


def test_measures_the_averaged_weights_and_leaves_the_training_ones():
    model = _model(keras.optimizers.Adam(1e-3, use_ema=True))
    control = _control(model, patience=1)
    model.optimizer._model_variables_moving_average[0].assign([[0.5]])
    _set(model, 3.0)
    entry = control.check(0, running_train_loss=1.0)
    assert entry["val_loss"] == pytest.approx(0.25)
    assert _w(model) == 3.0
    # Overfitting from the best check (w = 0.5 averaged): back to it, in
    # the weights and in their average.
    model.optimizer._model_variables_moving_average[0].assign([[2.0]])
    control.check(1, running_train_loss=0.1)
    assert control.history[-1]["action"] == "learning_rate+restore"
    assert _w(model) == 0.5
    assert float(model.optimizer._model_variables_moving_average[0]
                 .numpy()[0, 0]) == 0.5


def test_train_data_gives_the_training_loss():
    model = _model(keras.optimizers.SGD(0.1))
    control = _control(model, train_data=(2 * X, Y))
    _set(model, 1.0)
    entry = control.check(0, running_train_loss=123.0)
    assert entry["train_loss"] == pytest.approx(4.0)
    assert entry["val_loss"] == pytest.approx(1.0)


def test_running_training_loss_is_the_mean_since_the_last_check():
    model = _model(keras.optimizers.SGD(0.1))
    control = _control(model, every=2)
    control.on_epoch_begin(0)
    # fit's logs hold the epoch's mean so far: losses 4, 2 | 0, 1.
    for batch, mean in enumerate((4.0, 3.0, 2.0, 1.75)):
        model.optimizer.iterations.assign(batch + 1)
        control.on_train_batch_end(batch, {"loss": mean})
    assert [e["train_loss"] for e in control.history] == pytest.approx(
        [3.0, 0.5])
    assert [e["step"] for e in control.history] == [2, 4]
    # A new epoch restarts fit's mean, not the callback's sums.
    control.on_epoch_begin(1)
    model.optimizer.iterations.assign(5)
    control.on_train_batch_end(0, {"loss": 6.0})
    model.optimizer.iterations.assign(6)
    control.on_train_batch_end(1, {"loss": 5.0})
    assert control.history[-1]["train_loss"] == pytest.approx(5.0)


@pytest.mark.parametrize("final_w, kept", [(3.0, 1.0), (0.5, 0.5),
                                             (float("nan"), 1.0)])
def test_restore_best_weights_keeps_the_best_at_the_end(final_w, kept):
    model = _model(keras.optimizers.SGD(0.1))
    control = _control(model, patience=5, restore_best_weights=True)
    for step, w in enumerate((2.0, 1.0, 1.5)):
        _set(model, w)
        control.check(step, running_train_loss=0.1)
    _set(model, final_w)
    control.on_train_end()
    assert _w(model) == kept
    last = control.history[-1]
    assert last["action"] == (None if kept == final_w else "restore_best")
    assert last["val_loss"] == pytest.approx(final_w ** 2, nan_ok=True)
    # The final check does not change the rate; without the option it
    # does not run.
    assert float(model.optimizer.learning_rate) == pytest.approx(0.1)
    _set(model, 3.0)
    keep = _control(model, patience=5, restore_best_weights=False)
    keep.check(0, running_train_loss=0.1)
    _set(model, 4.0)
    keep.on_train_end()
    assert _w(model) == 4.0 and len(keep.history) == 1


def _memorizing_problem(optimizer, **compile_kwargs):
    """A seeded MLP compiled on 60 random-label examples (only
    memorizable) and 64 validation ones; (model, (x, y), (xv, yv))."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype("float32")
    y = rng.integers(0, 4, size=60)
    xv = rng.normal(size=(64, 8)).astype("float32")
    yv = rng.integers(0, 4, size=64)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)),
                              keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(4)])
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True), **compile_kwargs)
    return model, (x, y), (xv, yv)


def test_restore_best_weights_in_fit_keeps_the_averaged_best():
    model, (x, y), (xv, yv) = _memorizing_problem(
        keras.optimizers.Adam(3e-2, use_ema=True))
    control = ValidationControl((xv, yv), every=8, patience=100,
                                restore_best_weights=True)
    model.fit(x, y, batch_size=15, epochs=20, verbose=0,
              callbacks=[control])
    checks, final = control.history[:-1], control.history[-1]
    best = min(e["val_loss"] for e in checks)
    assert final["action"] == "restore_best" and final["val_loss"] > best
    assert model.evaluate(xv, yv, verbose=0) == pytest.approx(best,
                                                              rel=1e-5)


@pytest.mark.parametrize("epochs, steps_per_epoch, every", [
    (2, 40, 4), (1, 10, 1), (None, None, 250)])
def test_every_auto_is_a_twentieth_of_the_fit(epochs, steps_per_epoch,
                                              every):
    control = ValidationControl((X, Y), every="auto")
    control.set_model(_model(keras.optimizers.SGD(0.1)))
    control.set_params({"epochs": epochs, "steps": steps_per_epoch})
    control.on_train_begin()
    assert control._every == every


def test_every_auto_checks_twenty_times_per_fit():
    model = _model(keras.optimizers.SGD(0.1))
    x = np.ones((80, 1), "float32")
    control = ValidationControl((X, Y), every="auto",
                                restore_best_weights=False)
    model.fit(x, np.zeros_like(x), batch_size=2, epochs=2, verbose=0,
              callbacks=[control])
    assert [e["step"] for e in control.history] == list(range(4, 81, 4))


def test_fit_on_a_memorizing_problem_anneals_and_keeps_the_best():
    model, (x, y), (xv, yv) = _memorizing_problem(
        keras.optimizers.Adam(3e-2), steps_per_execution=2)
    control = ValidationControl((xv, yv), every=10, patience=1)
    model.fit(x, y, batch_size=15, epochs=40, verbose=0,
              callbacks=[control])
    # 160 steps, a batch end every 2: a check at each multiple of 10, and
    # the end of training's (restore_best_weights).
    steps = [e["step"] for e in control.history]
    assert steps == list(range(10, 161, 10)) + [160]
    best = min(e["val_loss"] for e in control.history[:-1])
    assert control.history[-1]["val_loss"] >= best
    actions = [e["action"] for e in control.history[:-1]]
    assert "learning_rate+restore" in actions
    assert all(math.isfinite(e["train_loss"])
               for e in control.history[:-1])
    halvings = sum(a is not None for a in actions)
    assert float(model.optimizer.learning_rate) == pytest.approx(
        3e-2 * 0.5 ** halvings)


def test_scaled_decay_is_saved_with_the_model(tmp_path):
    optimizer = keras_meta.LearnedOptimizer(weights="normalized")
    model = _model(optimizer)
    optimizer.scale_learned_decay(0.5)
    model.fit(X, Y, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        loaded.optimizer.phi["mlp0/kernel"].numpy(),
        optimizer.phi["mlp0/kernel"].numpy())


def test_scale_learned_decay_needs_a_learned_decay():
    assert keras_meta.LearnedOptimizer().has_learned_decay
    lstm = keras_meta.LearnedOptimizer(weights="per_tensor")
    assert not lstm.has_learned_decay
    with pytest.raises(ValueError, match="learned weight decay"):
        lstm.scale_learned_decay(0.5)
    with pytest.raises(ValueError, match="scale must be a number >= 0"):
        keras_meta.LearnedOptimizer(
            weights="normalized").scale_learned_decay(-1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"every": 0}, '`every` must be an int >= 1 or "auto"; got 0'),
    ({"every": "often"}, "or \"auto\"; got 'often'"),
    ({"every": True}, "or \"auto\"; got True"),
    ({"patience": 1.5}, "`patience` must be an int >= 1"),
    ({"factor": 1.0}, r"`factor` must be a number in \(0, 1\); got 1.0"),
    ({"gap": 0.5}, "`gap` must be a finite number >= 1"),
    ({"min_delta": True}, "`min_delta` must be"),
    ({"decay_factor": 1.0}, r"`decay_factor` must be a number in "
                            r"\[0, 1\); got 1.0"),
])
def test_bad_arguments_say_what_was_expected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ValidationControl((X, Y), **kwargs)


def test_bad_data_says_what_was_expected():
    with pytest.raises(ValueError, match="same, nonzero number"):
        ValidationControl((X, Y[:2]))
    with pytest.raises(ValueError, match="must be a tuple"):
        ValidationControl(X)
    with pytest.raises(ValueError, match="infinite"):
        ValidationControl(tf.data.Dataset.from_tensor_slices(
            (X, Y)).batch(2).repeat())
    model = _model(keras.optimizers.SGD(
        keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)))
    control = ValidationControl((X, Y))
    control.set_model(model)
    with pytest.raises(ValueError, match="not a schedule"):
        control.on_train_begin()


def test_a_dataset_works_as_validation_data():
    model = _model(keras.optimizers.SGD(0.1))
    data = tf.data.Dataset.from_tensor_slices((X, Y)).batch(3)
    control = ValidationControl(data)
    control.set_model(model)
    control.on_train_begin()
    _set(model, 2.0)
    assert control.check(0, 1.0)["val_loss"] == pytest.approx(4.0)

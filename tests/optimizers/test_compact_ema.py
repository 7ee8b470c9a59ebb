"""`LearnedOptimizer(compact_ema=True)`: the weight average kept as its
offset from the weights in bfloat16 (`optimizers.weight_average`). Training
must take the same steps as with Keras's average, and the averaged weights
must be Keras's up to the offset's rounding."""

import functools
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta
from keras_meta.optimizers import weight_average
from tests.optimizers.test_bfloat16_state import _data
from tests.optimizers.test_bfloat16_state import _model


def _train(compact, steps=40, seed=0, **kwargs):
    """`steps` train_on_batch steps (no finalize); returns the model."""
    model = _model(seed)
    model.compile(optimizer=keras_meta.LearnedOptimizer(
        compact_ema=compact, **kwargs), loss="mse")
    x, y = _data()
    for step in range(steps):
        i = (step * 16) % len(x)
        model.train_on_batch(x[i:i + 16], y[i:i + 16])
    return model


@functools.lru_cache(maxsize=None)
def _reference(steps=40, **kwargs):
    """`_train(False, steps, **kwargs)`, Keras's own average, trained once
    per module for each setting: several tests compare with the same
    reference run, which reads neither the compact path nor its patches."""
    return _train(False, steps, **kwargs)


def _averaged(model):
    return [v.numpy() for v in weight_average.averaged_values(
        model.optimizer, model.trainable_variables)]


def _close_to_keras(compact, keras_model, share=0.03):
    """The compact averages are Keras's within `share` of the RMS distance
    between Keras's averages and the weights (the offset's scale)."""
    for got, want, weights in zip(_averaged(compact), _averaged(keras_model),
                                  [v.numpy() for v in
                                   keras_model.trainable_variables]):
        drift = np.sqrt(np.mean((want - weights) ** 2))
        assert drift > 0
        error = np.sqrt(np.mean((got - want) ** 2))
        assert error <= share * drift, (error, drift)


@pytest.mark.parametrize("kwargs", [{}, {"gradient_accumulation_steps": 2},
                                    {"ema_momentum": 0.9}])
def test_the_same_steps_and_keras_averages(kwargs):
    compact, reference = _train(True, **kwargs), _reference(**kwargs)
    for a, b in zip(compact.trainable_variables,
                    reference.trainable_variables):
        if kwargs.get("gradient_accumulation_steps"):
            # The step runs in Keras's accumulation branch, where XLA may
            # fuse (and round) the re-anchoring with the update.
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5,
                                       atol=1e-8)
        else:
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    offsets = compact.optimizer._model_variables_moving_average
    assert {str(d.dtype) for d in offsets} == {"bfloat16"}
    _close_to_keras(compact, reference)


def test_float32_offsets_give_keras_averages_to_float32_rounding(
        monkeypatch):
    # The decomposition itself (re-anchor, then shrink), without rounding.
    monkeypatch.setattr(weight_average, "offset_dtype",
                        lambda dtype: tf.as_dtype(dtype))
    for kwargs in ({}, {"gradient_accumulation_steps": 2}):
        compact, reference = _train(True, **kwargs), _reference(**kwargs)
        for got, want in zip(_averaged(compact), _averaged(reference)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_plain_ops_under_a_strategy():
    reference = _train(False, steps=12)
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        plain = _train(True, steps=12)
    for a, b in zip(plain.trainable_variables,
                    reference.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5,
                                   atol=1e-6)
    _close_to_keras(plain, reference)


def test_fit_ends_on_the_average_and_saves_memory():
    x, y = _data()
    models = []
    for compact in (True, False):
        model = _model(seed=3)
        model.compile(optimizer=keras_meta.LearnedOptimizer(
            compact_ema=compact), loss="mse")
        history = model.fit(x, y, batch_size=16, epochs=6, shuffle=False,
                            verbose=0).history["loss"]
        models.append(model)
        assert history[-1] < 0.8 * history[0]
    compact, reference = models
    np.testing.assert_allclose(compact.evaluate(x, y, verbose=0),
                               reference.evaluate(x, y, verbose=0),
                               rtol=1e-3)
    # finalize_variable_values set the weights to the average and
    # restarted the offsets there.
    for offset in compact.optimizer._model_variables_moving_average:
        assert not np.any(tf.cast(offset, tf.float32).numpy())
    # Bytes per parameter: the rule's four float32 slots, and the average
    # in 2 bytes instead of 4.
    sizes = []
    for model in models:
        opt = model.optimizer
        state = [s for k in opt._state_keys if k != "t"
                 for s in opt._slots[k]]
        state += opt._model_variables_moving_average
        sizes.append(sum(v.numpy().nbytes for v in state)
                     / model.count_params())
    assert sizes == [18.0, 20.0]


def test_overwrite_frequency_sets_the_weights_to_the_average():
    compact = _train(True, steps=10, ema_overwrite_frequency=5)
    reference = _train(False, steps=10, ema_overwrite_frequency=5)
    for a, b in zip(compact.trainable_variables,
                    reference.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3,
                                   atol=1e-4)
    for offset in compact.optimizer._model_variables_moving_average:
        assert not np.any(tf.cast(offset, tf.float32).numpy())


def test_a_skipped_step_still_averages():
    # Keras averages weights that did not move: the offset shrinks by m.
    variable = keras.Variable(np.ones((4, 3), "float32"))
    opt = keras_meta.LearnedOptimizer(compact_ema=True, ema_momentum=0.5)
    opt.build([variable])
    for _ in range(2):
        opt.apply([tf.fill((4, 3), 0.3)], [variable])
    offset = tf.cast(opt._model_variables_moving_average[0], tf.float32)
    assert np.all(offset.numpy() > 0)
    opt.apply([tf.fill((4, 3), np.nan)], [variable])
    assert int(opt.nonfinite_count.numpy()) == 1
    after = tf.cast(opt._model_variables_moving_average[0], tf.float32)
    np.testing.assert_allclose(after.numpy(), 0.5 * offset.numpy(),
                               rtol=0.01)


def test_validation_control_reads_and_restarts_the_average():
    model = _train(True, steps=20)
    opt, variables = model.optimizer, model.trainable_variables
    offsets = opt._model_variables_moving_average
    want = [v.numpy() + tf.cast(d, tf.float32).numpy()
            for v, d in zip(variables, offsets)]
    for got, value in zip(_averaged(model), want):
        np.testing.assert_array_equal(got, value)
    weights = [v.numpy() for v in variables]
    weight_average.reset_to_weights(opt, variables)
    for got, value in zip(_averaged(model), weights):
        np.testing.assert_array_equal(got, value)


def test_keras_save_load_continues_bitwise(tmp_path):
    model = _train(True, steps=8, seed=2)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.compact_ema
    x, y = _data(seed=1)
    for m in (model, loaded):
        m.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_the_default_average_is_compact_and_named_weights_keep_kerass():
    assert keras_meta.LearnedOptimizer().compact_ema
    assert keras_meta.LearnedOptimizer(
        rule={"lazy_tables": True}).compact_ema
    assert not keras_meta.LearnedOptimizer(compact_ema=False).compact_ema
    assert keras_meta.LearnedOptimizer(compact_ema=False).use_ema
    assert not keras_meta.LearnedOptimizer(use_ema=True).compact_ema
    named = keras_meta.LearnedOptimizer(weights="normalized")
    assert not (named.use_ema or named.compact_ema)


def test_config_round_trip_and_old_configs():
    opt = keras_meta.LearnedOptimizer()
    config = opt.get_config()
    assert config["compact_ema"] is True
    assert keras_meta.LearnedOptimizer.from_config(config).compact_ema
    # A config saved before the option: Keras's average, whose saved
    # values are averages, not offsets.
    del config["compact_ema"]
    old = keras_meta.LearnedOptimizer.from_config(config)
    assert old.use_ema and not old.compact_ema


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="compact_ema.*must be a bool"):
        keras_meta.LearnedOptimizer(compact_ema="yes")
    with pytest.raises(ValueError, match="Keras's, applied outside"):
        keras_meta.LearnedOptimizer(weights="per_tensor", weight_decay=0.01,
                                    use_ema=True, compact_ema=True)
    # Without an average there is nothing to keep.
    variable = keras.Variable(np.ones((2, 2), "float32"))
    opt = keras_meta.LearnedOptimizer(use_ema=False, compact_ema=True)
    opt.build([variable])
    assert not getattr(opt, "_model_variables_moving_average", None)

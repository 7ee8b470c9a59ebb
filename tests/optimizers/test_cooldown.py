"""`NormalizedConfig(total_steps=T)`: the normalized rule's step size
decays linearly to 0 over the last `cooldown_fraction` of `T` steps, as a
pure function and as the Keras optimizer (training, save and load)."""

import dataclasses
import os

import keras
import numpy as np
import pytest

import keras_meta
from keras_meta.optimizers import weights_io
from keras_meta.rules import normalized
from tests.optimizers.test_bfloat16_state import _data
from tests.optimizers.test_bfloat16_state import _model


def test_step_size_is_unchanged_then_decays_linearly_to_zero():
    phi, config = weights_io.resolve("normalized")

    def sizes(cfg, steps):
        return np.array([float(normalized.step_size(phi, t, False, cfg))
                         for t in steps])
    steps = (1, 500, 801, 851, 901, 1000, 1001, 2000)
    base = sizes(config, steps)
    cooled = sizes(dataclasses.replace(config, total_steps=1000), steps)
    np.testing.assert_allclose(cooled[:3], base[:3], rtol=1e-6)
    # (1000 + 1 - t) / 200 of the rule's own size, 0 past the end.
    np.testing.assert_allclose(cooled[3:6] / base[3:6],
                               [0.75, 0.5, 1 / 200], rtol=1e-5)
    assert cooled[6] == 0.0 and cooled[7] == 0.0
    whole = sizes(dataclasses.replace(config, total_steps=1000,
                                      cooldown_fraction=1.0), (1, 501))
    np.testing.assert_allclose(whole / sizes(config, (1, 501)),
                               [1.0, 0.5], rtol=1e-5)


def test_keras_optimizer_stops_at_total_steps_and_saves_it(tmp_path):
    model = _model(seed=3)
    opt = keras_meta.LearnedOptimizer(rule={"total_steps": 96})
    model.compile(optimizer=opt, loss="mse")
    x, y = _data()
    # 128 examples in batches of 4: 32 steps per epoch, 96 in 3 epochs.
    losses = model.fit(x, y, batch_size=4, epochs=3, shuffle=False,
                       verbose=0).history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    assert opt.rule_config.total_steps == 96 and opt.use_ema
    # The default's rule otherwise (the partial `rule=` edits it).
    assert not opt.rule_config.dense_table_decay
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.rule_config == opt.rule_config
    # Past `total_steps` the step size is 0: the weights stay.
    before = [w.numpy() for w in loaded.trainable_weights]
    loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, w in zip(before, loaded.trainable_weights):
        np.testing.assert_array_equal(a, w.numpy())


def test_total_steps_sets_over_a_file_and_refuses_bad_values():
    opt = keras_meta.LearnedOptimizer(weights="normalized",
                                      rule={"total_steps": 5000,
                                            "cooldown_fraction": 0.5})
    assert opt.rule_config.total_steps == 5000
    assert opt.rule_config.cooldown_fraction == 0.5
    for bad in (0, -3, True, 2.5, "100"):
        with pytest.raises(ValueError, match="total_steps must be None"):
            normalized.NormalizedConfig(total_steps=bad)
    for bad in (0.0, 1.5, -0.2, True, "0.2"):
        with pytest.raises(ValueError, match="cooldown_fraction must be"):
            normalized.NormalizedConfig(cooldown_fraction=bad)


def test_linear_decay_from_the_start_equals_a_keras_schedule():
    # `cooldown_fraction=1` is Keras's `PolynomialDecay` to 0 as the
    # multiplier `learning_rate` (Keras counts steps from 0, the rule
    # from 1).
    x, y = _data()
    weights = []
    for kwargs in (
            {"rule": {"total_steps": 64, "cooldown_fraction": 1.0}},
            {"learning_rate": keras.optimizers.schedules.PolynomialDecay(
                1.0, decay_steps=64, end_learning_rate=0.0)}):
        model = _model(seed=4)
        model.compile(optimizer=keras_meta.LearnedOptimizer(
            use_ema=False, **kwargs), loss="mse")
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        weights.append([w.numpy() for w in model.trainable_weights])
    start = [w.numpy() for w in _model(seed=4).trainable_weights]
    for a, b, s in zip(*weights, start):
        assert np.abs(a - s).max() > 1e-4
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

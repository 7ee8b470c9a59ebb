"""State kept in bfloat16 (`NormalizedConfig.bfloat16_momenta`,
`bfloat16_second_moment`): stochastic
rounding (`optimizers.stochastic_rounding`) and the `LearnedOptimizer`
slots that use it."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta
from keras_meta.optimizers import stochastic_rounding

BF16 = {"bfloat16_momenta": True}


def _neighbours(x):
    """The bfloat16 values just below and above each float32 magnitude
    (truncation, and truncation plus one ulp), as float32."""
    bits = x.view(np.uint32) & np.uint32(0xFFFF0000)
    low = bits.view(np.float32)
    high = (bits + np.uint32(0x10000)).view(np.float32)
    return low, high


def test_to_bfloat16_rounds_to_a_neighbour_without_bias():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=2000) * 10.0 ** rng.integers(-6, 6, 2000)).astype(
        np.float32)
    low, high = _neighbours(x)
    draws = np.stack([
        tf.cast(stochastic_rounding.to_bfloat16(x, seed), tf.float32).numpy()
        for seed in range(400)])
    assert np.all((draws == low) | (draws == high))
    # The mean of 400 draws is within 5 standard errors of x, in ulps.
    ulp = np.abs(high - low)
    fraction = np.abs(x - low) / ulp
    mean = np.abs(draws.mean(axis=0) - low) / ulp
    sd = np.sqrt(fraction * (1 - fraction) / 400) + 1e-3
    assert np.all(np.abs(mean - fraction) < 5 * sd + 1e-6)


def test_to_bfloat16_is_exact_on_bfloat16_values_and_repeatable():
    x = tf.cast(tf.constant([1.5, -3.25, 0.0, 1e-20, 6e4]), tf.bfloat16)
    back = stochastic_rounding.to_bfloat16(tf.cast(x, tf.float32), 7)
    np.testing.assert_array_equal(back.numpy(), x.numpy())
    y = tf.random.stateless_normal((64, 3), (1, 2))
    eager = stochastic_rounding.to_bfloat16(y, 11)
    compiled = tf.function(stochastic_rounding.to_bfloat16,
                           jit_compile=True)(y, tf.constant(11))
    np.testing.assert_array_equal(eager.numpy(), compiled.numpy())
    np.testing.assert_array_equal(
        eager.numpy(), stochastic_rounding.to_bfloat16(y, 11).numpy())
    assert np.any(eager.numpy() != stochastic_rounding.to_bfloat16(
        y, 12).numpy())
    with pytest.raises(ValueError, match="float16"):
        stochastic_rounding.to_bfloat16(tf.constant([1.0], tf.float16), 0)


def test_a_momentum_in_bfloat16_follows_float32_where_rounding_stalls():
    # m <- 0.99 m + 0.01 g with g = 1: rounded to nearest, m stops once
    # 0.01 (1 - m) is below half an ulp (about 0.8); rounded stochastically
    # it follows the float32 average.
    exact = nearest = rounded = tf.constant([0.0] * 256)
    for step in range(600):
        exact = 0.99 * exact + 0.01
        nearest = tf.cast(tf.cast(0.99 * nearest + 0.01, tf.bfloat16),
                          tf.float32)
        rounded = tf.cast(stochastic_rounding.to_bfloat16(
            0.99 * rounded + 0.01, step), tf.float32)
    assert float(exact[0]) > 0.997
    assert float(tf.reduce_max(nearest)) < 0.85
    np.testing.assert_allclose(rounded.numpy(), exact.numpy(), atol=0.03)
    assert abs(float(tf.reduce_mean(rounded - exact))) < 0.005


def _model(seed=0, vocabulary=None):
    keras.utils.set_random_seed(seed)
    if vocabulary:
        return keras.Sequential([
            keras.Input((3,), dtype="int32"),
            keras.layers.Embedding(vocabulary, 4),
            keras.layers.Flatten(), keras.layers.Dense(1)])
    return keras.Sequential([keras.Input((6,)),
                             keras.layers.Dense(16, activation="tanh"),
                             keras.layers.Dense(1)])


def _data(n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, np.sin(x @ rng.normal(size=(6, 1))).astype("float32")


def _fit(model, rule, epochs=6, **kwargs):
    model.compile(optimizer=keras_meta.LearnedOptimizer(rule=rule, **kwargs),
                  loss="mse")
    x, y = _data()
    return model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False,
                     verbose=0).history["loss"]


def _state_bytes(opt):
    """Bytes of the per-parameter state: the rule's slots but the step
    counts `t`, and the weight average."""
    per_tensor = opt._slots["t"]
    state = [s for k in opt._state_keys for s in opt._slots[k]
             if not any(s is t for t in per_tensor)]
    state += list(opt._model_variables_moving_average)
    return sum(v.numpy().nbytes for v in state)


# Per parameter, with the default's compact weight average (2 bytes):
# 2 bytes for each bfloat16 slot, 4 for each float32 one.
@pytest.mark.parametrize("rule, compact, size", [
    (BF16, ("m0", "m1"), 14),
    ({"bfloat16_second_moment": True}, ("v",), 16)])
def test_the_chosen_state_is_stored_in_bfloat16(rule, compact, size):
    model = _model()
    losses = _fit(model, rule)
    opt = model.optimizer
    dtypes = {key: {str(s.dtype) for s in opt._slots[key]}
              for key in opt._state_keys}
    assert dtypes == {key: {"bfloat16" if key in compact else "float32"}
                      for key in ("m0", "m1", "m2", "v", "t")}
    assert _state_bytes(opt) == size * model.count_params()
    reference = _model()
    ref_losses = _fit(reference, None)
    assert losses[-1] < 0.8 * losses[0]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-3)
    for key in compact:
        pairs = [(tf.cast(got, tf.float32).numpy(), want.numpy())
                 for got, want in zip(opt._slots[key],
                                      reference.optimizer._slots[key])]
        for got, want in pairs:
            np.testing.assert_allclose(got, want,
                                       atol=0.05 * np.abs(want).max())
        assert any(np.any(got != want) for got, want in pairs)


def test_float16_variables_keep_their_dtype():
    variable = keras.Variable(np.ones((3, 2), "float16"), dtype="float16")
    opt = keras_meta.LearnedOptimizer(
        rule={**BF16, "bfloat16_second_moment": True})
    opt.build([variable])
    assert {str(opt._slots[k][0].dtype)
            for k in ("m0", "m1", "v")} == {"float16"}


def test_plain_ops_round_as_the_compiled_step():
    # Under a strategy the step runs the rule's plain ops, not XLA.
    model = _model(seed=1)
    losses = _fit(model, BF16, epochs=2)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        plain = _model(seed=1)
        plain_losses = _fit(plain, BF16, epochs=2)
    np.testing.assert_allclose(plain_losses, losses, rtol=1e-4)
    for a, b in zip(model.optimizer.variables, plain.optimizer.variables):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(
            tf.cast(a, tf.float32).numpy(), tf.cast(b, tf.float32).numpy(),
            rtol=0.02, atol=1e-5, err_msg=a.path)


def test_a_skipped_step_keeps_the_bfloat16_state():
    variable = keras.Variable(np.ones((4, 3), "float32"))
    opt = keras_meta.LearnedOptimizer(rule=BF16)
    opt.build([variable])
    opt.apply([tf.fill((4, 3), 0.3)], [variable])
    before = [opt._slots[k][0].numpy().copy() for k in ("m0", "m1")]
    opt.apply([tf.fill((4, 3), np.nan)], [variable])
    assert int(opt.nonfinite_count.numpy()) == 1
    for key, want in zip(("m0", "m1"), before):
        np.testing.assert_array_equal(opt._slots[key][0].numpy(), want)


def test_lazy_tables_keep_untouched_rows_bitwise():
    model = _model(vocabulary=50)
    model.compile(optimizer=keras_meta.LearnedOptimizer(
        rule={**BF16, "lazy_tables": True}), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10, (64, 3)).astype("int32")
    model.fit(x, rng.normal(size=(64, 1)), batch_size=16, verbose=0)
    before = model.optimizer._slots["m0"][0].numpy().copy()
    x = rng.integers(10, 20, (16, 3)).astype("int32")
    model.fit(x, rng.normal(size=(16, 1)), batch_size=16, verbose=0)
    after = model.optimizer._slots["m0"][0].numpy()
    np.testing.assert_array_equal(after[:10], before[:10])
    np.testing.assert_array_equal(after[20:], before[20:])
    assert np.any(after[10:20] != before[10:20])


@pytest.mark.parametrize("rule", [BF16, {"bfloat16_second_moment": True}])
def test_keras_save_load_continues_bitwise(tmp_path, rule):
    model = _model(seed=2)
    _fit(model, rule, epochs=1)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for name in rule:
        assert getattr(loaded.optimizer.rule_config, name)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x, y = _data(seed=1)
    for m in (model, loaded):
        m.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_with_the_factored_second_moment_three_floats_per_parameter():
    kernel = keras.Variable(np.ones((200, 100), "float32"))
    opt = keras_meta.LearnedOptimizer(
        rule={**BF16, "factored_second_moment": True})
    opt.build([kernel])
    slots = [opt._slots[k][0] for k in opt._state_keys]
    average = opt._model_variables_moving_average[0]
    size = sum(v.numpy().nbytes for v in slots + [average])
    # m0, m1 and the compact average: 2 bytes each; m2: 4; v: 4 * (200 +
    # 100).
    assert size == 10 * 200 * 100 + 4 * 300 + 4


def test_bfloat16_max_decay_picks_the_momenta_four_floats_per_parameter():
    kernel = keras.Variable(np.ones((30, 20), "float32"))
    opt = keras_meta.LearnedOptimizer(
        rule={**BF16, "bfloat16_max_decay": 0.9})
    opt.build([kernel])
    dtypes = {k: str(opt._slots[k][0].dtype) for k in opt._state_keys}
    assert dtypes == {"m0": "bfloat16", "m1": "float32", "m2": "float32",
                      "v": "float32", "t": "float32"}
    # m0 and the default's compact average: 2 bytes each; m1, m2, v: 4.
    state = [opt._slots[k][0] for k in ("m0", "m1", "m2", "v")]
    state.append(opt._model_variables_moving_average[0])
    assert sum(v.numpy().nbytes for v in state) == 16 * 30 * 20
    opt.apply([tf.fill((30, 20), 0.3)], [kernel])
    assert np.all(np.isfinite(kernel.numpy()))
    for bad in (0.999, -0.1, "0.9", True):
        with pytest.raises(ValueError, match="bfloat16_max_decay"):
            keras_meta.LearnedOptimizer(rule={**BF16,
                                              "bfloat16_max_decay": bad})


def test_a_non_bool_second_moment_option_is_refused():
    with pytest.raises(ValueError, match="bfloat16_second_moment.*'yes'"):
        keras_meta.LearnedOptimizer(rule={"bfloat16_second_moment": "yes"})

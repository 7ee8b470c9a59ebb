"""`NormalizedConfig(kept_momenta=k)`: the normalized rule with only its
first `k` momenta, as a pure function and as the Keras optimizer (state,
memory, save and load)."""

import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta
from keras_meta.rules import normalized
from tests.optimizers.test_bfloat16_state import _data
from tests.optimizers.test_bfloat16_state import _model
from tests.optimizers.test_normalized_rule import _grads
from tests.optimizers.test_normalized_rule import _steps
from tests.optimizers.test_normalized_rule import _trained_like

CONFIG = normalized.NormalizedConfig(antisymmetric=True)


@pytest.mark.parametrize("kept", [1, 2])
def test_kept_momenta_equal_zeroed_kernel_rows_of_the_full_rule(kept):
    params = _trained_like(seed=5, config=CONFIG)
    # The full rule whose first kernel ignores the dropped momenta's
    # features (rows kept + 1 .. 3; row 0 is g, row 4 the parameter).
    kernel = params["mlp0/kernel"].numpy()
    kernel[kept + 1:len(CONFIG.momentum_decays) + 1] = 0.0
    assert np.abs(params["mlp0/kernel"].numpy()[3]).max() > 0.1
    zeroed = {**params, "mlp0/kernel": tf.constant(kernel)}
    grads_seq = [_grads(s) for s in range(6)]
    full, _ = _steps(normalized.NormalizedMLPRule(CONFIG), zeroed,
                     grads_seq)
    config = dataclasses.replace(CONFIG, kept_momenta=kept)
    cut, state = _steps(normalized.NormalizedMLPRule(config), params,
                        grads_seq)
    for a, b in zip(full, cut):
        for x, y in zip(a, b):
            np.testing.assert_allclose(y.numpy(), x.numpy(), rtol=1e-5,
                                       atol=1e-9)
    assert sorted(state[0]) == sorted(
        [f"m{i}" for i in range(kept)] + ["v", "t"])
    # The dropped features matter: with the trained rows the full rule
    # steps elsewhere.
    other, _ = _steps(normalized.NormalizedMLPRule(CONFIG), params,
                      grads_seq)
    assert not np.allclose(other[-1][0].numpy(), cut[-1][0].numpy())


def test_keras_rule_with_two_momenta_memory_training_and_save_load(
        tmp_path):
    model = _model(seed=3)
    opt = keras_meta.LearnedOptimizer(rule={"kept_momenta": 2})
    model.compile(optimizer=opt, loss="mse")
    x, y = _data()
    losses = model.fit(x, y, batch_size=16, epochs=4, shuffle=False,
                       verbose=0).history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    assert opt.rule_config.kept_momenta == 2 and opt.use_ema
    assert opt._state_keys == ("m0", "m1", "v", "t")
    # m0, m1 and v: 4 bytes each; the default's compact average: 2. Three
    # and a half floats per parameter.
    state = [s for k in ("m0", "m1", "v") for s in opt._slots[k]]
    state += list(opt._model_variables_moving_average)
    assert sum(v.numpy().nbytes for v in state) == 14 * model.count_params()
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.rule_config == opt.rule_config
    for m in (model, loaded):
        m.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_kept_momenta_sets_over_a_file_and_refuses_bad_values():
    opt = keras_meta.LearnedOptimizer(weights="normalized",
                                      rule={"kept_momenta": 1})
    assert opt.rule_config.kept_momenta == 1
    assert opt.rule_config.num_parameter_features == 5
    assert normalized.NormalizedConfig().num_kept_momenta == 3
    for bad in (0, 4, True, 1.0, "2"):
        with pytest.raises(ValueError, match="kept_momenta must be None"):
            normalized.NormalizedConfig(kept_momenta=bad)
    # The hypergradient reads momentum `hyper_momentum` (1).
    with pytest.raises(ValueError, match="above hyper_momentum=1"):
        normalized.NormalizedConfig(hyper_rate=0.1, kept_momenta=1)
    normalized.NormalizedConfig(hyper_rate=0.1, kept_momenta=2)


def test_a_rule_with_one_momentum_needs_no_hypergradient_index():
    config = normalized.NormalizedConfig(momentum_decays=(0.9,))
    assert config.hyper_momentum == 1 and config.num_parameter_features == 3
    with pytest.raises(ValueError, match="hyper_momentum"):
        normalized.NormalizedConfig(momentum_decays=(0.9,), hyper_rate=0.1)
    normalized.NormalizedConfig(momentum_decays=(0.9,), hyper_rate=0.1,
                                hyper_momentum=0)

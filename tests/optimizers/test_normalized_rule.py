"""The normalized MLP rule (`keras_meta.rules.normalized`), checked by hand.

The contract suite (tests/rules/test_update_rules.py) covers shapes,
purity, the inner loop and the non-finite policy; here: the untrained rule
is per-tensor RMS-normalized Adam, the update is invariant to the loss
scale, the schedule and weight decay mean what the docstring says, and the
config and meta-parameters round-trip.
"""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta
from keras_meta.optimizers import rule_kinds
from keras_meta.optimizers import weights_io
from keras_meta.rules import inner_loop
from keras_meta.rules import normalized

CONFIG = normalized.NormalizedConfig()
SHAPES = [(4, 3), (3,)]


def _tensors(arrays):
    return {k: tf.constant(v) for k, v in arrays.items()}


def _values(seed=0):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=s), "float32") for s in SHAPES]


def _grads(seed):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=s) * 10.0 ** rng.integers(-3, 3, s),
                        "float32") for s in SHAPES]


def _normalized_adam(grads_seq, lr, b1=0.9, b2=0.999, eps=1e-8,
                     normalize=True):
    """Per-tensor RMS-normalized Adam (plain Adam with `normalize=False`),
    in NumPy float64."""
    updates = []
    m = [np.zeros(s) for s in SHAPES]
    v = [np.zeros(s) for s in SHAPES]
    for t, grads in enumerate(grads_seq, start=1):
        step = []
        for i, g in enumerate(grads):
            g = np.asarray(g, np.float64)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            d = (m[i] / (1 - b1 ** t)) / (np.sqrt(v[i] / (1 - b2 ** t)) + eps)
            scale = np.sqrt(np.mean(d * d)) if normalize else 1.0
            step.append(-lr * d / scale)
        updates.append(step)
    return updates


def _steps(rule, params, grads_seq, values=None):
    values = values or _values()
    state = rule.init(values)
    out = []
    for step, grads in enumerate(grads_seq):
        updates, state = rule.update(params, grads, state, values, step)
        values = [v + u for v, u in zip(values, updates)]
        out.append(updates)
    return out, state


def test_untrained_rule_is_normalized_adam_on_two_steps():
    rule = normalized.NormalizedMLPRule(CONFIG)
    params = _tensors(normalized.init_meta_params(CONFIG, seed=3))
    grads_seq = [_grads(1), _grads(2)]
    got, state = _steps(rule, params, grads_seq)
    expected = _normalized_adam(grads_seq, CONFIG.init_lr)
    for got_step, exp_step in zip(got, expected):
        for a, b in zip(got_step, exp_step):
            np.testing.assert_allclose(a.numpy(), b, rtol=2e-5)
            # RMS-normalized: every tensor's step has RMS init_lr.
            assert np.sqrt(np.mean(a.numpy() ** 2)) == pytest.approx(
                CONFIG.init_lr, rel=1e-5)
    assert float(state[0]["t"]) == 2.0
    assert sorted(state[0]) == ["m0", "m1", "m2", "t", "v"]


def test_untrained_rule_without_normalization_is_adam():
    config = normalized.NormalizedConfig(normalize="none")
    rule = normalized.NormalizedMLPRule(config)
    params = _tensors(normalized.init_meta_params(config, seed=3))
    grads_seq = [_grads(s) for s in range(1, 6)]
    got, _ = _steps(rule, params, grads_seq)
    expected = _normalized_adam(grads_seq, config.init_lr, normalize=False)
    for got_step, exp_step in zip(got, expected):
        for a, b in zip(got_step, exp_step):
            np.testing.assert_allclose(a.numpy(), b, rtol=2e-5)
    # Not normalized: a tensor whose gradient touches one row moves that
    # row by about init_lr, as Adam does (normalizing would amplify it).
    sparse = [tf.constant([[1.0, -2.0, 3.0]] + [[0.0] * 3] * 3), tf.ones(3)]
    for cfg, expected_max in ((config, 1.0), (CONFIG, 2.0)):
        updates, _ = _steps(normalized.NormalizedMLPRule(cfg),
                            _tensors(normalized.init_meta_params(cfg)),
                            [sparse])
        assert np.max(np.abs(updates[0][0].numpy())) / cfg.init_lr == \
            pytest.approx(expected_max, rel=1e-4)


def test_antisymmetric_mlp_flips_with_the_signs_and_has_no_drift():
    config = normalized.NormalizedConfig(normalize="none", antisymmetric=True)
    rule = normalized.NormalizedMLPRule(config)
    params = _trained_like(config=config)
    values, grads = _values(), [_grads(s) for s in range(3)]
    up, _ = _steps(rule, params, grads, values)
    down, _ = _steps(rule, params, [[-g for g in gs] for gs in grads],
                     [-v for v in values])
    for a, b in zip(up, down):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x.numpy(), -y.numpy(), rtol=1e-5,
                                       atol=1e-9)
    # A zero gradient on a zero parameter gives a zero update (no drift),
    # which the plain MLP with a non-zero output bias does not.
    zeros = [tf.zeros(s) for s in SHAPES]
    for cfg, drifts in ((config, False), (
            normalized.NormalizedConfig(normalize="none"), True)):
        got, _ = _steps(normalized.NormalizedMLPRule(cfg),
                        _trained_like(config=cfg), [zeros], zeros)
        assert bool(np.any(got[0][0].numpy() != 0.0)) == drifts
    # The one-layer shortcut (each pre-activation once) is bitwise the
    # definition.
    feats = [tf.constant(np.random.default_rng(i).normal(size=50),
                         "float32") for i in range(5)]
    tensor_feats = normalized.rule.tensor_features(7.0, False, config,
                                                   "float32")
    definition = 0.5 * (
        normalized.rule._mlp(params, feats, tensor_feats, config)
        - normalized.rule._mlp(params, [-f for f in feats], tensor_feats,
                               config))
    np.testing.assert_array_equal(
        normalized.rule.mlp_output(params, feats, tensor_feats,
                                   config).numpy(), definition.numpy())


def _trained_like(seed=0, config=CONFIG):
    """Meta-parameters with a non-zero MLP output and schedule."""
    params = normalized.init_meta_params(config, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for key in ("out/kernel", "out/bias", "schedule/kernel"):
        params[key] = rng.normal(0.0, 0.5, params[key].shape).astype("float32")
    return _tensors(params)


def test_update_is_invariant_to_the_loss_scale():
    rule = normalized.NormalizedMLPRule(CONFIG, weight_decay=0.1)
    params = _trained_like()
    grads_seq = [_grads(s) for s in range(4)]
    base, _ = _steps(rule, params, grads_seq)
    scaled, _ = _steps(rule, params,
                       [[g * 1000.0 for g in grads] for grads in grads_seq])
    for a_step, b_step in zip(base, scaled):
        for a, b in zip(a_step, b_step):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4,
                                       atol=1e-9)


def test_weight_decay_is_decoupled_and_scales_with_the_step():
    values = _values()
    params = _trained_like(2)
    grads = [_grads(5)]
    plain, state = _steps(normalized.NormalizedMLPRule(CONFIG), params,
                          grads, values)
    decayed, _ = _steps(normalized.NormalizedMLPRule(CONFIG, 0.25), params,
                        grads, values)
    rates = normalized.NormalizedMLPRule(CONFIG).step_sizes(
        params, [{"t": s["t"] - 1.0} for s in state], values)
    for a, b, rate, value in zip(plain[0], decayed[0], rates, values):
        # p <- p - lr_t * (d + wd * p): the decay is wd times the step size
        # actually taken, and does not pass through the normalization.
        np.testing.assert_allclose((b - a).numpy(),
                                   -float(rate) * 0.25 * value.numpy(),
                                   rtol=1e-5, atol=1e-10)


def test_hypergradient_offset_follows_the_momentum_cosine_by_hand():
    config = normalized.NormalizedConfig(
        hyper_rate=0.3, hyper_down_fraction=0.5,
        hyper_offset_range=(-0.3, 0.5))
    rule = normalized.NormalizedMLPRule(config)
    params = _tensors(normalized.init_meta_params(config))
    rng = np.random.default_rng(0)
    base = [[tf.constant(rng.normal(size=s), "float32") for s in SHAPES]
            for _ in range(3)]
    # One direction with some noise, then its reversal: the cosine is
    # positive first, negative after the turn (until the average turns
    # too), and the offset hits both bounds.
    grads_seq = ([[b0 + 0.2 * b for b0, b in zip(base[0], g)]
                  for g in base] * 3 + [[-b0 for b0 in base[0]]] * 10)
    _, state = _steps(rule, params, grads_seq)
    m1 = [np.zeros(s) for s in SHAPES]
    v = [np.zeros(s) for s in SHAPES]
    offset = [0.0, 0.0]
    history = []
    for t, grads in enumerate(grads_seq, start=1):
        for i, g in enumerate(grads):
            g = np.asarray(g, np.float64)
            v[i] = 0.999 * v[i] + 0.001 * g * g
            inv = 1.0 / (np.sqrt(v[i] / (1 - 0.999 ** t)) + 1e-8)
            past = m1[i] * inv
            norms = np.linalg.norm(g) * np.linalg.norm(past)
            cos = float(np.sum(g * past) / norms) if norms else 0.0
            cos = cos if cos > 0 else 0.5 * cos
            offset[i] = float(np.clip(offset[i] + 0.3 * cos, -0.3, 0.5))
            m1[i] = 0.99 * m1[i] + 0.01 * g
        history.append(list(offset))
    assert max(h[0] for h in history) == pytest.approx(0.5)
    assert min(h[0] for h in history) == pytest.approx(-0.3)
    for i, s in enumerate(state):
        assert float(s["offset"]) == pytest.approx(offset[i], abs=1e-5)
    # The step size is the schedule's times exp(offset).
    sizes = rule.step_sizes(params, state, _values())
    for i, size in enumerate(sizes):
        assert float(size) == pytest.approx(
            config.init_lr * math.exp(offset[i]), rel=1e-5)
    # The offset is per tensor state: the file's config round-trips it.
    assert normalized.state_keys(config)[-1] == "offset"
    assert normalized.NormalizedConfig.from_dict(
        config.to_dict()) == config


def test_schedule_is_bounded_and_learned():
    params = normalized.init_meta_params(CONFIG)
    params["schedule/kernel"][:] = 0.0
    params["schedule/kernel"][1] = -100.0   # tanh(t / 100): a decay
    params = _tensors(params)
    early = float(normalized.step_size(params, 1.0, False, CONFIG))
    late = float(normalized.step_size(params, 1e4, False, CONFIG))
    assert early < CONFIG.init_lr
    assert late == pytest.approx(
        CONFIG.init_lr * math.exp(-CONFIG.max_schedule_offset), rel=1e-4)
    params["log_lr"] = tf.constant(50.0)
    assert float(normalized.step_size(params, 1.0, True, CONFIG)) <= (
        CONFIG.lr_range[1] * 1.0001 * math.exp(CONFIG.max_schedule_offset))


def test_anytime_decay_starts_at_decay_start_and_follows_the_power():
    config = normalized.NormalizedConfig(decay_power=0.5, decay_start=100)
    params = _trained_like()
    for t, factor in ((1.0, 1.0), (100.0, 1.0), (400.0, 0.5), (1e4, 0.1)):
        plain = float(normalized.step_size(params, t, False, CONFIG))
        decayed = float(normalized.step_size(params, t, False, config))
        assert decayed == pytest.approx(factor * plain, rel=1e-5), t
    # The update is the plain rule's times the factor (the direction is
    # unchanged), here at the 400th step.
    grads = _grads(4)
    updates = []
    for cfg in (config, CONFIG):
        rule = normalized.NormalizedMLPRule(cfg)
        state = [dict(s, t=tf.constant(399.0)) for s in rule.init(_values())]
        updates.append(rule.update(params, grads, state, _values(), 0)[0])
    for a, b in zip(*updates):
        np.testing.assert_allclose(a.numpy(), 0.5 * b.numpy(), rtol=1e-5)


def test_mlp_on_matrices_only_gives_vectors_adams_direction():
    config = normalized.NormalizedConfig(normalize="none",
                                         mlp_tensors="matrices")
    params = _trained_like(config=config)
    grads_seq = [_grads(s) for s in range(3)]
    got, _ = _steps(normalized.NormalizedMLPRule(config), params, grads_seq)
    full, _ = _steps(normalized.NormalizedMLPRule(
        normalized.NormalizedConfig(normalize="none")), params, grads_seq)
    sizes = [float(normalized.step_size(params, t, True, config))
             for t in (1.0, 2.0, 3.0)]
    adam = _normalized_adam(grads_seq, 1.0, normalize=False)
    for step, (g, f, a, size) in enumerate(zip(got, full, adam, sizes)):
        # The vector (the bias) takes Adam's direction at the step size...
        np.testing.assert_allclose(g[1].numpy(), size * a[1], rtol=2e-5)
        # ...the matrix keeps the MLP's term, as in the full rule.
        np.testing.assert_allclose(g[0].numpy(), f[0].numpy(), rtol=1e-6)
        assert not np.allclose(f[1].numpy(), g[1].numpy()), step


def test_unroll_and_meta_gradients_reach_every_meta_parameter():
    rule = normalized.NormalizedMLPRule(CONFIG)
    params = _trained_like()
    targets = _grads(9)

    def loss_fn(values, step):
        del step
        return tf.add_n([tf.reduce_sum(tf.square(v - t))
                         for v, t in zip(values, targets)])

    with tf.GradientTape() as tape:
        tape.watch(list(params.values()))
        values, _, _ = inner_loop.unroll(rule, params, _values(), loss_fn, 3)
        loss = loss_fn(values, 0)
    grads = tape.gradient(loss, params)
    for key, grad in grads.items():
        assert grad is not None and np.all(np.isfinite(grad.numpy())), key
    assert float(tf.abs(grads["out/kernel"]).numpy().max()) > 0


def test_config_round_trip_and_errors():
    config = normalized.NormalizedConfig(hidden_size=4, num_layers=2,
                                         momentum_decays=[0.9, 0.99])
    assert normalized.NormalizedConfig.from_dict(config.to_dict()) == config
    assert config.momentum_decays == (0.9, 0.99)
    shapes = normalized.meta_param_shapes(config)
    assert shapes["mlp0/kernel"] == (4, 4) and "mlp1/kernel" in shapes
    assert normalized.state_keys(config) == ("m0", "m1", "v", "t")
    with pytest.raises(ValueError, match="Unknown NormalizedConfig"):
        normalized.NormalizedConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="lr_range"):
        normalized.NormalizedConfig(init_lr=1.0)
    with pytest.raises(ValueError, match="normalize must be"):
        normalized.NormalizedConfig(normalize="layer")
    for bad in ({"hyper_rate": -0.1}, {"hyper_momentum": 1.0},
                {"hyper_momentum": 3, "hyper_rate": 0.1},
                {"hyper_down_fraction": -1.0}):
        with pytest.raises(ValueError, match="hyper_momentum"):
            normalized.NormalizedConfig(**bad)
    with pytest.raises(ValueError, match="hyper_offset_range"):
        normalized.NormalizedConfig(hyper_offset_range=(0.5, 2.0))
    with pytest.raises(ValueError, match="mlp_tensors must be"):
        normalized.NormalizedConfig(mlp_tensors="vectors")
    for bad in ({"decay_power": -0.5}, {"decay_start": 0}):
        with pytest.raises(ValueError, match="decay_power >= 0"):
            normalized.NormalizedConfig(**bad)
    with pytest.raises(ValueError, match="decay_start must be a number"):
        normalized.NormalizedConfig(decay_start="1000")
    # Files written before these fields load with their defaults (off).
    old = {k: v for k, v in CONFIG.to_dict().items()
           if k not in normalized.NormalizedConfig.UNTRAINED_FIELDS}
    assert normalized.NormalizedConfig.from_dict(old) == CONFIG
    with pytest.raises(ValueError, match="weight_decay"):
        normalized.NormalizedMLPRule(CONFIG, weight_decay=-1.0)


# ------------------------------- the Keras adapter and the weights file

def test_keras_adapter_equals_the_pure_rule():
    params = {k: v.numpy() for k, v in _trained_like().items()}
    rule_dict = rule_kinds.config_to_dict(CONFIG)
    opt = keras_meta.LearnedOptimizer(weights=params, rule=rule_dict)
    variables = [keras.Variable(v) for v in _values()]
    grads_seq = [_grads(s) for s in range(4)]
    for grads in grads_seq:
        opt.apply(grads, variables)
    rule = normalized.NormalizedMLPRule(CONFIG)
    values = _values()
    state = rule.init(values)
    for step, grads in enumerate(grads_seq):
        updates, state = rule.update(_tensors(params), grads, state, values,
                                     step)
        values = [v - (-u) for v, u in zip(values, updates)]
    # The adapter fuses the step, the check and the writes into one XLA
    # computation, whose fusions may contract a multiply-add into one
    # rounding where the rule's own function does not: equal within a few
    # float32 roundings, not bitwise.
    for variable, value in zip(variables, values):
        np.testing.assert_allclose(variable.numpy(), value.numpy(),
                                   rtol=1e-6, atol=0)
    for index, tensor_state in enumerate(state):
        for key, tensor in tensor_state.items():
            np.testing.assert_allclose(opt._slots[key][index].numpy(),
                                       tensor.numpy(), rtol=1e-6, atol=0)


def _table_setup(config, rows, seed):
    """Trained-like phi, a LearnedOptimizer of `config` with them, a NumPy
    generator, a `[rows, 3]` table's value, and two variables holding it
    (for sparse and for dense gradients)."""
    params = {k: v.numpy() for k, v in _trained_like().items()}
    opt = keras_meta.LearnedOptimizer(
        weights=params, rule=rule_kinds.config_to_dict(config))
    rng = np.random.default_rng(seed)
    value = rng.normal(size=(rows, 3)).astype("float32")
    return (params, opt, rng, value, keras.Variable(value),
            keras.Variable(value))


def _assert_dense_steps(variable, params, grads_seq, value):
    """`variable`, stepped from `value` on the dense `grads_seq`, holds the
    pure rule's result."""
    steps, _ = _steps(normalized.NormalizedMLPRule(CONFIG), _tensors(params),
                      grads_seq, [tf.constant(value)])
    expected = value
    for updates in steps:
        expected = expected + updates[0].numpy()
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("dense_table_decay", [True, False])
def test_dense_table_decay_reads_the_rows_a_sparse_step_touches(
        dense_table_decay):
    # An embedding table (4 rows) whose first and third sparse gradients
    # touch every row and whose second does not: with
    # dense_table_decay=False those two steps are the pure rule's without
    # the parameter feature (the learned decay), the second its own. A
    # dense variable's steps are the rule's own.
    params, opt, rng, value, variable, dense_variable = _table_setup(
        normalized.NormalizedConfig(dense_table_decay=dense_table_decay),
        rows=4, seed=3)
    dropped = normalized.scale_parameter_feature(params, CONFIG, 0.0)
    rule = normalized.NormalizedMLPRule(CONFIG)
    values, state = [tf.constant(value)], rule.init([value])
    dense_seq = []
    for step, indices in enumerate([(0, 1, 2, 3, 1), (0, 2, 2), (3, 2, 1, 0)]):
        rows = rng.normal(size=(len(indices), 3)).astype("float32")
        dense = tf.math.unsorted_segment_sum(rows, indices, 4)
        dense_seq.append([dense])
        opt.apply([tf.IndexedSlices(rows, indices, (4, 3)), dense],
                  [variable, dense_variable])
        every_row = len(set(indices)) == 4
        phi = dropped if every_row and not dense_table_decay else params
        other = params if phi is dropped else dropped
        # The decay changes the step (else the test could not fail).
        assert not np.allclose(
            rule.update(_tensors(phi), [dense], state, values, step)[0][0],
            rule.update(_tensors(other), [dense], state, values, step)[0][0],
            rtol=1e-3)
        updates, state = rule.update(_tensors(phi), [dense], state, values,
                                     step)
        values = [values[0] + updates[0]]
        np.testing.assert_allclose(variable.numpy(), values[0].numpy(),
                                   rtol=1e-6, atol=0)
    _assert_dense_steps(dense_variable, params, dense_seq, value)
    kernel = tf.constant(params["mlp0/kernel"])
    kept = normalized.gate_parameter_feature(_tensors(params), 1.0)
    np.testing.assert_array_equal(kept["mlp0/kernel"].numpy(),
                                  kernel.numpy())
    with pytest.raises(ValueError, match="dense_table_decay must be a bool"):
        normalized.NormalizedConfig(dense_table_decay="no")


def test_lazy_tables_step_only_the_rows_a_sparse_gradient_touches():
    # With lazy_tables, each sparse step is the pure rule's step of the
    # summed gradient on the rows it touches; the other rows keep their
    # values bitwise and their momenta and second moments. A dense
    # gradient (here the same rows summed) steps every row.
    params, opt, rng, value, variable, dense_variable = _table_setup(
        normalized.NormalizedConfig(lazy_tables=True), rows=5, seed=5)
    rule = normalized.NormalizedMLPRule(CONFIG)
    expected, state = value, rule.init([value])
    dense_seq = []
    for step, indices in enumerate([(0, 1, 1), (2, 3, 4, 0), (4,), (1, 3)]):
        rows = rng.normal(size=(len(indices), 3)).astype("float32")
        dense = tf.math.unsorted_segment_sum(rows, indices, 5)
        dense_seq.append([dense])
        before = variable.numpy()
        opt.apply([tf.IndexedSlices(rows, indices, (5, 3)), dense],
                  [variable, dense_variable])
        touched = np.isin(np.arange(5), indices)[:, None]
        updates, new = rule.update(_tensors(params), [dense], state,
                                   [tf.constant(expected)], step)
        # The full step moves the untouched rows too (else the test
        # could not fail).
        assert np.all(np.abs(updates[0].numpy()[~touched[:, 0]]) > 0)
        expected = np.where(touched, expected + updates[0].numpy(), expected)
        state = [{key: np.where(touched, x, state[0][key])
                  if np.shape(x) == value.shape else x
                  for key, x in new[0].items()}]
        np.testing.assert_array_equal(variable.numpy()[~touched[:, 0]],
                                      before[~touched[:, 0]])
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)
        for key, x in state[0].items():
            np.testing.assert_allclose(opt._slots[key][0].numpy(), x,
                                       rtol=1e-6, atol=1e-12)
    _assert_dense_steps(dense_variable, params, dense_seq, value)
    with pytest.raises(ValueError, match="lazy_tables must be a bool"):
        normalized.NormalizedConfig(lazy_tables=1)


def test_init_normalized_weights_and_provenance_round_trip(tmp_path):
    opt = keras_meta.LearnedOptimizer(weights=weights_io.INIT_NORMALIZED)
    assert opt.rule_config == CONFIG
    for key, value in normalized.init_meta_params(CONFIG).items():
        np.testing.assert_array_equal(opt.phi[key].numpy(), value)
    path = os.path.join(tmp_path, "normalized.npz")
    provenance = {"command": "python -m x --seed=3", "commit": "abc",
                  "seed": 3, "validation": {"loss": 0.25}}
    params = {k: v.numpy() for k, v in _trained_like().items()}
    weights_io.save_phi(path, params, CONFIG, provenance=provenance)
    loaded, config = weights_io.load_phi(path)
    assert config == CONFIG
    assert weights_io.load_provenance(path) == provenance
    opt = keras_meta.LearnedOptimizer(weights=path)
    for key, value in params.items():
        np.testing.assert_array_equal(opt.phi[key].numpy(), value)
        np.testing.assert_array_equal(loaded[key], value)
    restored = keras_meta.LearnedOptimizer.from_config(opt.get_config())
    assert restored.rule_config == CONFIG
    # LSTM files keep their config's form (no rule_type), so old files and
    # new ones read alike; provenance is optional for them too.
    lstm_path = os.path.join(tmp_path, "lstm.npz")
    phi, lstm_config = weights_io.load_phi(
        weights_io.pretrained_path("per_tensor"))
    weights_io.save_phi(lstm_path, phi, lstm_config)
    assert weights_io.load_provenance(lstm_path) == {}
    with np.load(lstm_path) as data:
        assert "rule_type" not in str(data["__config__"])
    with pytest.raises(ValueError, match="rule_type"):
        rule_kinds.config_from_dict({"rule_type": "nope"})


def test_without_the_parameter_feature_the_update_ignores_the_values():
    config = normalized.NormalizedConfig(normalize="none",
                                         antisymmetric=True,
                                         parameter_feature=False)
    assert config.num_parameter_features == 4
    assert normalized.meta_param_shapes(config)["mlp0/kernel"] == (4, 8)
    params = _trained_like(config=config)
    grads = [_grads(s) for s in range(3)]
    rule = normalized.NormalizedMLPRule(config)
    a, _ = _steps(rule, params, grads, _values(0))
    b, _ = _steps(rule, params, grads, [10.0 * v for v in _values(1)])
    for x, y in zip(a, b):
        for u, w in zip(x, y):
            np.testing.assert_array_equal(u.numpy(), w.numpy())
    # With it, the same gradients give other updates for other values.
    with_p = normalized.NormalizedConfig(normalize="none", antisymmetric=True)
    rule = normalized.NormalizedMLPRule(with_p)
    params = _trained_like(config=with_p)
    a, _ = _steps(rule, params, grads, _values(0))
    b, _ = _steps(rule, params, grads, [10.0 * v for v in _values(1)])
    assert not np.allclose(a[-1][0].numpy(), b[-1][0].numpy())
    with pytest.raises(ValueError, match="parameter_feature must be a bool"):
        normalized.NormalizedConfig(parameter_feature=1)


def test_scaling_the_parameter_feature_scales_what_the_mlp_reads():
    config = normalized.NormalizedConfig(normalize="none", antisymmetric=True)
    params = {k: v.numpy() for k, v in _trained_like(config=config).items()}
    rng = np.random.default_rng(5)
    features = [tf.constant(rng.normal(size=7), "float32") for _ in range(5)]
    tensor_feats = normalized.rule.tensor_features(20, False, config,
                                                   "float32")
    scaled = normalized.scale_parameter_feature(params, config, 0.25)
    np.testing.assert_allclose(
        normalized.rule.mlp_output(_tensors(scaled), features, tensor_feats,
                                   config).numpy(),
        normalized.rule.mlp_output(_tensors(params),
                                   features[:4] + [0.25 * features[4]],
                                   tensor_feats, config).numpy(), rtol=1e-5,
        atol=1e-7)
    np.testing.assert_array_equal(params["mlp0/kernel"][:4],
                                  scaled["mlp0/kernel"][:4])
    # Scale 0 is the rule without the feature.
    grads = [_grads(s) for s in range(3)]
    a, _ = _steps(normalized.NormalizedMLPRule(config),
                  _tensors(normalized.scale_parameter_feature(params, config,
                                                              0.0)), grads)
    dropped, plain = normalized.drop_parameter_feature(params, config)
    b, _ = _steps(normalized.NormalizedMLPRule(plain), _tensors(dropped),
                  grads)
    for x, y in zip(a, b):
        for u, w in zip(x, y):
            np.testing.assert_allclose(u.numpy(), w.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="number >= 0, got -1"):
        normalized.scale_parameter_feature(params, config, -1)
    with pytest.raises(ValueError, match="no parameter feature"):
        normalized.scale_parameter_feature(dropped, plain, 0.5)


def test_hypergradient_rule_checks_its_results_not_its_inputs():
    # Its cosine multiplies gradients, so bounded inputs do not bound its
    # results: `update_checked` refuses it and the optimizer checks the
    # update and state instead, skipping a NaN gradient all the same.
    config = normalized.NormalizedConfig(hyper_rate=0.1)
    rule = normalized.NormalizedMLPRule(config)
    assert not rule.checks_inputs
    assert normalized.NormalizedMLPRule(CONFIG).checks_inputs
    with pytest.raises(ValueError, match="hyper_rate=0.1"):
        rule.update_checked({}, [tf.ones(2)], rule.init([tf.ones(2)]),
                            [tf.ones(2)], 0)
    opt = keras_meta.LearnedOptimizer(
        weights=weights_io.INIT_NORMALIZED,
        rule=rule_kinds.config_to_dict(config))
    a = keras.Variable(np.ones((3,), "float32"))
    opt.build([a])
    opt.apply([tf.constant([1.0, np.nan, 1.0])], [a])
    np.testing.assert_array_equal(a.numpy(), np.ones(3))
    assert int(opt.nonfinite_count.numpy()) == 1
    opt.apply([tf.ones(3)], [a])
    assert np.all(a.numpy() < 1.0)


def test_update_checked_takes_one_tensor():
    rule = normalized.NormalizedMLPRule(CONFIG)
    values = [tf.ones(2), tf.ones(3)]
    with pytest.raises(ValueError, match="one tensor; got 2 gradients"):
        rule.update_checked(_tensors(normalized.init_meta_params(CONFIG)),
                            values, rule.init(values), values, 0)

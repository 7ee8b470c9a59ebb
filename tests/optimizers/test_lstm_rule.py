"""Tests of the functional LSTM update rule."""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from keras_meta.rules import lstm as lstm_rule


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_hand_checked_step_paper_rule():
    # One layer, one unit, paper rule: inputs (f1, f2, h) -> gates (i, f, g, o).
    cfg = lstm_rule.RuleConfig(hidden_size=1, num_layers=1, descent="none",
                               output_scale=0.1)
    kernel = np.array([[0.5, -0.2, 0.3, 0.1],
                       [0.4, 0.6, -0.5, 0.2],
                       [0.7, 0.1, 0.2, -0.3]], np.float64)
    bias = np.array([0.1, 0.0, -0.1, 0.05])
    phi = {"lstm0/kernel": kernel, "lstm0/bias": bias,
           "out/kernel": np.array([[2.0, -1.0]]), "out/bias": np.array([0.5, 0.3]),
           "log_lr": np.array(0.0)}
    grads = np.array([0.5, 0.0, -1e-6])
    state = lstm_rule.init_state(grads.shape, cfg, dtype="float64")
    state["h"] = tf.constant([[0.2], [0.0], [-0.1]], tf.float64)
    state["c"] = tf.constant([[0.3], [0.0], [0.4]], tf.float64)
    phi_t = {k: tf.constant(v, tf.float64) for k, v in phi.items()}
    upd, new = lstm_rule.apply(phi_t, tf.constant(grads), state, cfg)

    # By hand: preprocessing with p = 10.
    feats = [(math.log(0.5) / 10, 1.0), (-1.0, 0.0), (-1.0, math.exp(10) * -1e-6)]
    for j, ((f1, f2), h, c) in enumerate(zip(feats, [0.2, 0.0, -0.1], [0.3, 0.0, 0.4])):
        z = [f1 * kernel[0, k] + f2 * kernel[1, k] + h * kernel[2, k] + bias[k]
             for k in range(4)]
        c_new = _sig(z[1] + 1.0) * c + _sig(z[0]) * math.tanh(z[2])
        h_new = _sig(z[3]) * math.tanh(c_new)
        expected_update = 0.1 * (2.0 * h_new + 0.5)
        np.testing.assert_allclose(upd.numpy()[j], expected_update, rtol=1e-12)
        np.testing.assert_allclose(new["h"].numpy()[j, 0], h_new, rtol=1e-12)
        np.testing.assert_allclose(new["c"].numpy()[j, 0], c_new, rtol=1e-12)
    assert float(new["t"]) == 1.0


def test_hand_checked_step_adam_rule():
    # With a zero LSTM output layer the "adam" rule is bias-corrected Adam
    # with step size exp(log_lr): the first step is -lr * sign(g).
    cfg = lstm_rule.RuleConfig(hidden_size=3, num_layers=2, descent="adam")
    phi = {k: tf.constant(v, tf.float64)
           for k, v in lstm_rule.init_phi(cfg, seed=1, dtype="float64").items()}
    phi["out/kernel"] = tf.zeros_like(phi["out/kernel"])
    phi["log_lr"] = tf.constant(math.log(0.05), tf.float64)
    g = tf.constant([[0.3, -2.0], [1e-3, 7.0]], tf.float64)
    state = lstm_rule.init_state(g, cfg)
    upd, state = lstm_rule.apply(phi, g, state, cfg)
    eps = cfg.epsilon
    np.testing.assert_allclose(
        upd.numpy(), -0.05 * g.numpy() / (np.abs(g.numpy()) + eps), rtol=1e-9)
    # Second step, by hand: m = 0.9 m + 0.1 g, v = 0.999 v + 0.001 g^2.
    g2 = tf.constant([[-0.1, 1.0], [2e-3, 7.0]], tf.float64)
    upd2, state2 = lstm_rule.apply(phi, g2, state, cfg)
    m = 0.9 * 0.1 * g.numpy() + 0.1 * g2.numpy()
    v = 0.999 * 0.001 * g.numpy() ** 2 + 0.001 * g2.numpy() ** 2
    m_hat, v_hat = m / (1 - 0.9 ** 2), v / (1 - 0.999 ** 2)
    np.testing.assert_allclose(upd2.numpy(), -0.05 * m_hat / (np.sqrt(v_hat) + eps),
                               rtol=1e-9)
    np.testing.assert_allclose(state2["m"].numpy(), m, rtol=1e-12)
    np.testing.assert_allclose(state2["v"].numpy(), v, rtol=1e-12)


def test_sgd_rule_with_zero_output_is_sgd_and_modulates_otherwise():
    # descent="sgd": update = -init_lr * exp(0.1 s) * (g + 0.1 d); no log_lr.
    cfg = lstm_rule.RuleConfig(hidden_size=3, num_layers=2, descent="sgd",
                               init_lr=0.25)
    assert "log_lr" not in lstm_rule.phi_shapes(cfg)
    phi = {k: tf.constant(v, tf.float64)
           for k, v in lstm_rule.init_phi(cfg, seed=1, dtype="float64").items()}
    g = tf.constant([[0.3, -2.0], [1e-3, 7.0]], tf.float64)
    zero = dict(phi, **{"out/kernel": tf.zeros_like(phi["out/kernel"]),
                        "out/bias": tf.zeros_like(phi["out/bias"])})
    state = lstm_rule.init_state(g, cfg)
    for _ in range(2):  # the LSTM state moves; the update stays -lr * g
        upd, state = lstm_rule.apply(zero, g, state, cfg)
        np.testing.assert_array_equal(upd.numpy(), -0.25 * g.numpy())
    # Output bias (d, s) = (1, 2): the rate is scaled by exp(0.2) and 0.1 is
    # added to the direction, for every coordinate.
    biased = dict(zero, **{"out/bias": tf.constant([1.0, 2.0], tf.float64)})
    upd, _ = lstm_rule.apply(biased, g, lstm_rule.init_state(g, cfg), cfg)
    np.testing.assert_allclose(
        upd.numpy(), -0.25 * math.exp(0.2) * (g.numpy() + 0.1), rtol=1e-12)


def test_momentum_rule_with_zero_output_is_secant_heavy_ball():
    # descent="momentum", zero output layer: a probe step, then heavy ball
    # with momentum beta_1 and rate exp(log_lr) / L, L the largest secant
    # ||g_t - g_{t-1}|| / ||dx_{t-1}|| so far.
    cfg = lstm_rule.RuleConfig(hidden_size=3, num_layers=2,
                               descent="momentum", beta_1=0.8, init_lr=2.0)
    assert cfg.input_size == 4
    phi = {k: tf.constant(v, tf.float64)
           for k, v in lstm_rule.init_phi(cfg, seed=1, dtype="float64").items()}
    np.testing.assert_allclose(float(phi["log_lr"]), math.log(2.0))
    zero = dict(phi, **{"out/kernel": tf.zeros_like(phi["out/kernel"]),
                        "out/bias": tf.zeros_like(phi["out/bias"])})
    gs = [np.array([[0.3, -2.0], [1e-3, 7.0]]),
          np.array([[-0.1, 1.0], [2e-3, 7.0]]),
          np.array([[0.5, 0.5], [-1.0, 0.0]]),
          np.array([[0.4, 0.6], [-0.9, 0.1]])]
    state = lstm_rule.init_state(tf.constant(gs[0]), cfg)
    m, curv, dx, g_prev = np.zeros_like(gs[0]), 0.0, None, None
    for i, g in enumerate(gs):
        upd, state = lstm_rule.apply(zero, tf.constant(g), state, cfg)
        m = 0.8 * m + 0.2 * g
        if i == 0:
            expected = -1e-3 * g / np.sqrt(np.mean(g ** 2))
        else:
            curv = max(curv, np.linalg.norm(g - g_prev) / np.linalg.norm(dx))
            expected = -(2.0 / curv) * m / 0.2
        np.testing.assert_allclose(upd.numpy(), expected, rtol=1e-9)
        np.testing.assert_allclose(float(state["curv"]), curv, rtol=1e-9)
        dx, g_prev = expected, g
    # Output bias (d, s) = (1, 2): the step is scaled by exp(0.2) and
    # 0.1 * sqrt(v_hat) is added to the direction, at every coordinate.
    biased = dict(zero, **{"out/bias": tf.constant([1.0, 2.0], tf.float64)})
    upd, _ = lstm_rule.apply(biased, tf.constant(gs[-1]), state, cfg)
    m_next = 0.8 * m + 0.2 * gs[-1]
    v = np.zeros_like(m)
    for g in gs + [gs[-1]]:
        v = 0.999 * v + 0.001 * g ** 2
    v_hat = v / (1 - 0.999 ** 5)
    np.testing.assert_allclose(
        upd.numpy(),
        -(2.0 / curv) * math.exp(0.2) * (m_next / 0.2 + 0.1 * np.sqrt(v_hat)),
        rtol=1e-9)


def test_momentum_rule_is_invariant_to_loss_and_curvature_scale():
    # On f(x) = c/2 ||A x||^2 the rule's path is the same for every c > 0.
    cfg = lstm_rule.RuleConfig(descent="momentum", init_lr=2.0, beta_1=0.9)
    phi = {k: tf.constant(v, tf.float64)
           for k, v in lstm_rule.init_phi(cfg, seed=0, dtype="float64").items()}
    # Only the LSTM's log-magnitude inputs see the scale: with a zero
    # output layer the paths must agree to rounding.
    phi["out/kernel"] = tf.zeros_like(phi["out/kernel"])
    a = tf.constant(np.random.default_rng(0).normal(size=(6, 4)), tf.float64)
    paths = []
    for c in (1.0, 1e-3, 1e3):
        x = tf.constant([1.0, -2.0, 0.5, 3.0], tf.float64)
        state = lstm_rule.init_state(x, cfg)
        path = []
        for _ in range(100):
            g = c * tf.linalg.matvec(a, tf.linalg.matvec(a, x), adjoint_a=True)
            upd, state = lstm_rule.apply(phi, g, state, cfg)
            x = x + upd
            path.append(x.numpy())
        paths.append(np.array(path))
    for p in paths[1:]:
        np.testing.assert_allclose(p, paths[0], rtol=1e-8, atol=1e-12)

    def loss(x):
        return float(tf.reduce_sum(tf.linalg.matvec(a, x) ** 2))

    x0 = tf.constant([1.0, -2.0, 0.5, 3.0], tf.float64)
    assert loss(tf.constant(paths[0][-1])) < 1e-2 * loss(x0)


def _tensor_phi(cfg, log_lr, hyper, out_bias=(0.0, 0.0, 0.0)):
    phi = {k: tf.constant(v, tf.float64)
           for k, v in lstm_rule.init_phi(cfg, seed=1, dtype="float64").items()}
    phi["out/kernel"] = tf.zeros_like(phi["out/kernel"])
    phi["out/bias"] = tf.constant(out_bias, tf.float64)
    phi["log_lr"] = tf.constant(log_lr, tf.float64)
    phi["hyper_rate"] = tf.constant(hyper, tf.float64)
    return phi


def test_hand_checked_steps_tensor_rule():
    # Zero output layer: Adam whose log step size moves by
    # hyper_rate * cos(g_t, m_{t-1} / sqrt(v_{t-1})), once per tensor.
    cfg = lstm_rule.RuleConfig(hidden_size=3, num_layers=2,
                               granularity="tensor")
    phi = _tensor_phi(cfg, math.log(0.01), 0.5)
    g1 = np.array([[0.3, -2.0], [1e-3, 7.0]])
    g2 = np.array([[0.2, -1.0], [-4e-3, 1.0]])
    state = lstm_rule.init_state(tf.constant(g1), cfg)
    upd1, state = lstm_rule.apply(phi, tf.constant(g1), state, cfg)
    eps = cfg.epsilon
    # Step 1: no previous direction, cosine 0: plain Adam, -lr * sign(g).
    np.testing.assert_allclose(upd1.numpy(), -0.01 * g1 / (np.abs(g1) + eps),
                               rtol=1e-9)
    assert float(state["log_lr"]) == 0.0
    upd2, state = lstm_rule.apply(phi, tf.constant(g2), state, cfg)
    m1, v1 = 0.1 * g1, 0.001 * g1 ** 2
    d1 = m1 / (np.sqrt(v1) + 1e-12)
    cos = np.sum(g2 * d1) / (np.linalg.norm(g2) * np.linalg.norm(d1))
    m2, v2 = 0.9 * m1 + 0.1 * g2, 0.999 * v1 + 0.001 * g2 ** 2
    m_hat, v_hat = m2 / (1 - 0.9 ** 2), v2 / (1 - 0.999 ** 2)
    expected = -0.01 * math.exp(0.5 * cos) * m_hat / (np.sqrt(v_hat) + eps)
    np.testing.assert_allclose(float(state["log_lr"]), 0.5 * cos, rtol=1e-9)
    np.testing.assert_allclose(upd2.numpy(), expected, rtol=1e-9)
    # Output bias (o0, o1, o2) = (1, 2, 3): offset += 0.1, step *= exp(0.2),
    # direction += 0.3 * clip(g / sqrt(v_hat)).
    biased = _tensor_phi(cfg, math.log(0.01), 0.5, (1.0, 2.0, 3.0))
    upd, st = lstm_rule.apply(biased, tf.constant(g1),
                              lstm_rule.init_state(tf.constant(g1), cfg), cfg)
    direction = g1 / (np.abs(g1) + eps) + 0.3 * np.clip(
        g1 / (np.abs(g1) + eps), -5, 5)
    np.testing.assert_allclose(upd.numpy(), -0.01 * math.exp(0.3) * direction,
                               rtol=1e-9)
    np.testing.assert_allclose(float(st["log_lr"]), 0.1, rtol=1e-12)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_tensor_rule_hyper_down_fraction(fraction):
    # A negative hypergradient cosine moves the offset by
    # hyper_rate * fraction * cos; a positive one by hyper_rate * cos.
    cfg = lstm_rule.RuleConfig(hidden_size=3, num_layers=1,
                               granularity="tensor",
                               hyper_down_fraction=fraction)
    phi = _tensor_phi(cfg, math.log(0.01), 0.5)
    g1 = np.array([0.3, -2.0, 1.0])
    for g2, sign in ((-g1, -1.0), (g1, 1.0)):
        state = lstm_rule.init_state(tf.constant(g1), cfg)
        _, state = lstm_rule.apply(phi, tf.constant(g1), state, cfg)
        _, state = lstm_rule.apply(phi, tf.constant(g2), state, cfg)
        d1 = 0.1 * g1 / (np.sqrt(0.001 * g1 ** 2) + 1e-12)
        cos = np.sum(g2 * d1) / (np.linalg.norm(g2) * np.linalg.norm(d1))
        assert np.sign(cos) == sign
        gain = fraction if cos < 0 else 1.0
        np.testing.assert_allclose(float(state["log_lr"]), 0.5 * gain * cos,
                                   rtol=1e-9)


def test_tensor_rule_hyper_horizon_by_hand():
    # hyper_horizon H: the hypergradient cosine is taken against u, the
    # average of past Adam directions with decay 1 - 1/H, not against d_{t-1}.
    cfg = lstm_rule.RuleConfig(hidden_size=3, num_layers=1,
                               granularity="tensor", hyper_horizon=4.0)
    assert lstm_rule.state_keys(cfg)[-1] == "u"
    phi = _tensor_phi(cfg, math.log(0.01), 0.5)
    gs = [np.array([0.3, -2.0, 1.0]), np.array([0.2, 1.0, -1.0]),
          np.array([-0.5, 0.5, 2.0])]
    state = lstm_rule.init_state(tf.constant(gs[0]), cfg)
    m, v, u, offset = np.zeros(3), np.zeros(3), np.zeros(3), 0.0
    for t, g in enumerate(gs, start=1):
        _, state = lstm_rule.apply(phi, tf.constant(g), state, cfg)
        cos = (0.0 if not u.any() else
               np.sum(g * u) / (np.linalg.norm(g) * np.linalg.norm(u)))
        offset += 0.5 * cos
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g ** 2
        nominal = (m / (1 - 0.9 ** t)) / (
            np.sqrt(v / (1 - 0.999 ** t)) + cfg.epsilon)
        u = 0.75 * u + 0.25 * nominal
        np.testing.assert_allclose(float(state["log_lr"]), offset, rtol=1e-9,
                                   atol=1e-12)
        np.testing.assert_allclose(state["u"].numpy(), u, rtol=1e-9)
    assert offset < 0.0  # the third gradient opposes the average direction
    # H = 1 is the one-step rule and keeps no u.
    one = dataclasses.replace(cfg, hyper_horizon=1.0)
    assert "u" not in lstm_rule.state_keys(one)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_tensor_rule_offset_stays_in_its_trust_region(sign):
    # A gradient that keeps (or keeps flipping) its direction moves the
    # offset by +-hyper_rate per step until min_offset / max_offset stop it.
    cfg = lstm_rule.RuleConfig(hidden_size=3, num_layers=1,
                               granularity="tensor", min_offset=-0.7,
                               max_offset=0.9)
    phi = _tensor_phi(cfg, math.log(0.01), 0.25)
    # Equal magnitudes: Adam's direction is parallel to g, so the cosine is
    # exactly +1 (same direction) or -1 (flipping).
    g = tf.constant([0.5, -0.5, 0.5], tf.float64)
    state = lstm_rule.init_state(g, cfg)
    offsets = []
    for t in range(8):
        upd, state = lstm_rule.apply(phi, g * sign ** t, state, cfg)
        offsets.append(float(state["log_lr"]))
    expected = np.clip(0.25 * sign * np.arange(8), -0.7, 0.9)
    np.testing.assert_allclose(offsets, expected, rtol=1e-9, atol=1e-12)
    # The step uses the clipped offset.
    np.testing.assert_allclose(
        np.abs(upd.numpy()).max(),
        0.01 * math.exp(expected[-1]) * float(
            np.abs(_adam_nominal_last(g.numpy(), sign, 8)).max()), rtol=1e-9)


def _adam_nominal_last(g, sign, steps, b1=0.9, b2=0.999, eps=1e-8):
    m = v = 0.0
    for t in range(steps):
        gt = g * sign ** t
        m, v = b1 * m + (1 - b1) * gt, b2 * v + (1 - b2) * gt ** 2
    m_hat, v_hat = m / (1 - b1 ** steps), v / (1 - b2 ** steps)
    return m_hat / (np.sqrt(v_hat) + eps)


def test_tensor_rule_is_invariant_to_the_gradient_scale():
    # Every feature is scale-free, so a loss scaled by 1000 gets the same
    # updates (up to Adam's epsilon).
    cfg = lstm_rule.RuleConfig(granularity="tensor")
    phi = {k: tf.constant(v, tf.float64)
           for k, v in lstm_rule.init_phi(cfg, seed=3, dtype="float64").items()}
    rng = np.random.default_rng(0)
    gs = [tf.constant(rng.normal(size=(4, 3))) for _ in range(4)]
    s1 = lstm_rule.init_state(gs[0], cfg)
    s2 = lstm_rule.init_state(gs[0], cfg)
    for g in gs:
        u1, s1 = lstm_rule.apply(phi, g, s1, cfg)
        u2, s2 = lstm_rule.apply(phi, 1000.0 * g, s2, cfg)
        np.testing.assert_allclose(u1.numpy(), u2.numpy(), rtol=1e-6)
    assert float(s1["log_lr"]) != 0.0  # the offset did move


@pytest.mark.parametrize("shape", [(), (3,), (2, 5), (2, 3, 4), (1, 1, 3, 8)])
@pytest.mark.parametrize("hidden,layers,descent,granularity",
                         [(20, 2, "adam", "coordinate"),
                          (20, 2, "none", "coordinate"),
                          (5, 1, "adam", "coordinate"),
                          (4, 1, "sgd", "coordinate"),
                          (20, 2, "momentum", "coordinate"),
                          (20, 2, "adam", "tensor"),
                          (20, 2, "adam", "tensor_h100")])
def test_state_shapes_per_variable(shape, hidden, layers, descent,
                                   granularity):
    horizon = 100.0 if granularity == "tensor_h100" else 1.0
    granularity = granularity.removesuffix("_h100")
    cfg = lstm_rule.RuleConfig(hidden_size=hidden, num_layers=layers,
                               descent=descent, granularity=granularity,
                               hyper_horizon=horizon)
    phi = {k: tf.constant(v) for k, v in lstm_rule.init_phi(cfg).items()}
    g = tf.random.normal(shape)
    state = lstm_rule.init_state(g, cfg)
    expected = lstm_rule.state_shapes(shape, cfg)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert tuple(expected) == lstm_rule.state_keys(cfg)
    per_coordinate = () if granularity == "tensor" else shape
    assert expected["h"] == per_coordinate + (hidden * layers,)
    assert expected["m"] == shape
    upd, new = lstm_rule.apply(phi, g, state, cfg)
    assert tuple(upd.shape) == shape
    assert {k: tuple(v.shape) for k, v in new.items()} == expected
    assert np.all(np.isfinite(upd.numpy()))


@pytest.mark.parametrize("x,expected", [
    (0.0, (-1.0, 0.0)),
    (1e-6, (-1.0, math.exp(10) * 1e-6)),
    (-1e-6, (-1.0, -math.exp(10) * 1e-6)),
    (1.0, (0.0, 1.0)),
    (-0.5, (math.log(0.5) / 10, -1.0)),
    (1e30, (math.log(1e30) / 10, 1.0)),
    (-3e38, (math.log(3e38) / 10, -1.0)),
])
def test_preprocess_values(x, expected):
    out = lstm_rule.preprocess(tf.constant([x], tf.float32), 10.0).numpy()[0]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)


def test_preprocess_gradient_finite_at_zero_and_huge():
    x = tf.constant([0.0, 1e-30, 1e30, -3e38])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(lstm_rule.preprocess(x))
    assert np.all(np.isfinite(tape.gradient(y, x).numpy()))


@pytest.mark.parametrize("descent,granularity", [
    ("adam", "coordinate"), ("none", "coordinate"), ("adam", "tensor")])
def test_update_at_zero_and_huge_gradients_is_finite(descent, granularity):
    cfg = lstm_rule.RuleConfig(descent=descent, granularity=granularity)
    phi = {k: tf.constant(v) for k, v in lstm_rule.init_phi(cfg).items()}
    g = tf.constant([0.0, 1e-20, 1e20, -1e30])
    upd, new = lstm_rule.apply(phi, g, lstm_rule.init_state(g, cfg), cfg)
    assert np.all(np.isfinite(upd.numpy()))
    assert np.all(np.abs(upd.numpy()) < 1.0)


def test_list_apply_matches_single_and_bad_lengths():
    cfg = lstm_rule.RuleConfig()
    phi = {k: tf.constant(v) for k, v in lstm_rule.init_phi(cfg).items()}
    gs = [tf.random.normal((3, 2)), tf.random.normal((4,))]
    states = [lstm_rule.init_state(g, cfg) for g in gs]
    ups, _ = lstm_rule.apply(phi, gs, states, cfg)
    for g, s, u in zip(gs, states, ups):
        np.testing.assert_allclose(lstm_rule.apply(phi, g, s, cfg)[0].numpy(),
                                   u.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="2 gradients but 1 states"):
        lstm_rule.apply(phi, gs, states[:1], cfg)


@pytest.mark.parametrize("kwargs,match", [
    ({"descent": "rmsprop"}, "descent must be one of"),
    ({"granularity": "tensor", "descent": "momentum"}, "needs descent='adam'"),
    ({"hidden_size": 0}, "must be positive"),
    ({"granularity": "layer"}, "granularity must be one of"),
    ({"granularity": "tensor", "descent": "sgd"}, "needs descent='adam'"),
    ({"granularity": "tensor", "hyper_horizon": 0.5}, "hyper_horizon must"),
    ({"granularity": "tensor", "min_offset": 0.5}, "min_offset <= 0"),
    ({"granularity": "tensor", "max_offset": 9.0}, "max_offset <= 8"),
])
def test_bad_rule_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lstm_rule.RuleConfig(**kwargs)

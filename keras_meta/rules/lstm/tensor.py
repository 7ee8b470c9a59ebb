"""The per-tensor variant (`granularity="tensor"`): one LSTM step per
tensor steers Adam's step size for the whole tensor.

    offset_t = clip(offset_{t-1} + hyper_rate * c_t + o_0,
                    min_offset, max_offset)
    c_t      = cos(g_t, d_{t-1}), times hyper_down_fraction if negative
               (with hyper_horizon H > 1: cos(g_t, u_{t-1}),
               u_t = (1 - 1/H) u_{t-1} + d_t / H)
    update   = -exp(log_lr + offset_t + o_1)
                * (m_hat / (sqrt(v_hat) + eps) + o_2 * clip(g / sqrt(v_hat)))

with `(o_0, o_1, o_2) = output_scale * (W_out h + b_out)`. A zero output
layer is Adam with hypergradient step-size adaptation; the offset range is
a trust region for runs longer than meta-training's.
"""

from keras import ops

from keras_meta.rules.lstm import cell
from keras_meta.rules.lstm import features


def _hypergradient_cosine(g, state, feats, config):
    """`c_t`: the one-step cosine feature, or the one against `u` (with
    hyper_horizon > 1), negative values scaled by hyper_down_fraction.
    Returns `(c_t, u_{t-1} or None)`."""
    cos = feats[0]
    u_old = None
    if config.hyper_horizon > 1.0:
        u_old = ops.reshape(state["u"], (-1,))
        cos = features.cosine(g, u_old)
    if config.hyper_down_fraction != 1.0:
        cos = ops.maximum(cos, 0.0) + config.hyper_down_fraction * ops.minimum(
            cos, 0.0)
    return cos, u_old


def apply_tensor(phi, grad, state, config, feature_grad=None):
    """One step of the per-tensor rule for one tensor.

    Args:
        phi: the meta-parameter dict.
        grad: the gradient tensor.
        state: its state dict (`params.state_shapes`).
        config: a `RuleConfig` with `granularity="tensor"`.
        feature_grad: the values the statistics are computed from, where
            they should be differentiated otherwise than `grad`; default
            `grad`.

    Returns:
        `(update, new_state)`, `update` shaped like `grad`.
    """
    dtype = grad.dtype
    shape = ops.shape(grad)
    g = ops.reshape(grad if feature_grad is None else feature_grad, (-1,))
    m_old = ops.reshape(state["m"], (-1,))
    v_old = ops.reshape(state["v"], (-1,))
    t, m, v, m_hat, v_hat, denom = features.adam_moments(g, state, config)
    nominal = m_hat / denom
    is_vector = len(grad.shape) <= 1
    feats = features.tensor_features(g, m_old, v_old, nominal, v_hat,
                                     is_vector, state["log_lr"])
    hdim, nl = config.hidden_size, config.num_layers
    out, hs, cs = cell.run_lstm(
        phi, ops.reshape(feats, (1, -1)),
        ops.reshape(state["h"], (1, nl, hdim)),
        ops.reshape(state["c"], (1, nl, hdim)), config, dtype)
    out = out[0] * config.output_scale
    hyper = ops.cast(phi["hyper_rate"], dtype)
    cos, u_old = _hypergradient_cosine(g, state, feats, config)
    offset = ops.clip(state["log_lr"] + hyper * cos + out[0],
                      config.min_offset, config.max_offset)
    step = ops.exp(ops.cast(phi["log_lr"], dtype) + offset + out[1])
    direction = nominal + out[2] * ops.clip(g / denom, -5.0, 5.0)
    update = -step * direction
    new_state = cell.new_state(state, hs, cs, m, v, t, shape)
    new_state["log_lr"] = offset
    if config.hyper_horizon > 1.0:
        decay = 1.0 - 1.0 / config.hyper_horizon
        new_state["u"] = ops.reshape(decay * u_old + (1.0 - decay) * nominal,
                                     shape)
    return ops.reshape(update, shape), new_state

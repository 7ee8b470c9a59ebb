"""The coordinatewise variants (`granularity="coordinate"`): the LSTM runs
for every coordinate, each keeping its own LSTM state.

Shared by every `descent`: Adam's moments of the gradient, the paper's
preprocessed gradient as features (plus Adam's direction and the clipped
normalized gradient for `"adam"` and `"momentum"`), and the LSTM's two
outputs `(d, s)` per coordinate, scaled by `output_scale`. The descent then
turns them into the update:

    "adam":  -exp(log_lr) * exp(s) * (m_hat / (sqrt(v_hat) + eps) + d)
    "sgd":   -init_lr * exp(s) * (g + d)     (exactly SGD for a zero output)
    "none":  d                               (the paper's rule)

and `"momentum"` is in `keras_meta.rules.lstm.momentum`.
"""

from keras import ops

from keras_meta.rules.lstm import cell
from keras_meta.rules.lstm import features
from keras_meta.rules.lstm import momentum


def _adam(phi, q, state, config):
    s = q["out"][:, 1] * config.output_scale
    lr = ops.exp(ops.cast(phi["log_lr"], q["dtype"]))
    return -lr * ops.exp(s) * (q["nominal"] + q["d"]), {}


def _sgd(phi, q, state, config):
    s = q["out"][:, 1] * config.output_scale
    return -config.init_lr * ops.exp(s) * (q["nominal_g"] + q["d"]), {}


def _none(phi, q, state, config):
    return q["d"], {}


# descent -> fn(phi, quantities, state, config) -> (flat update, extra state)
DESCENT_UPDATES = {"adam": _adam, "sgd": _sgd, "none": _none,
                   "momentum": momentum.update}


def _lstm_features(g, nominal, denom, config):
    feats = features.preprocess(g, config.preprocess_p)
    if config.descent in ("adam", "momentum"):
        feats = ops.concatenate(
            [
                feats,
                ops.expand_dims(nominal, -1),
                ops.expand_dims(ops.clip(g / denom, -5.0, 5.0), -1),
            ],
            axis=-1,
        )
    return feats


def apply_coordinate(phi, grad, state, config, feature_grad=None):
    """One step of a coordinatewise rule for one tensor.

    Args:
        phi: the meta-parameter dict.
        grad: the gradient tensor; the nominal `"sgd"` direction.
        state: its state dict (`params.state_shapes`).
        config: a `RuleConfig` with `granularity="coordinate"`.
        feature_grad: the values the features and moments are computed
            from, where they should be differentiated otherwise than
            `grad`; default `grad`.

    Returns:
        `(update, new_state)`, `update` shaped like `grad`.
    """
    dtype = grad.dtype
    shape = ops.shape(grad)
    # The nominal "sgd" direction is `grad`; the features and moments see
    # `feature_grad` (the same values, perhaps differentiated otherwise).
    nominal_g = ops.reshape(grad, (-1,))
    g = nominal_g if feature_grad is None else ops.reshape(feature_grad, (-1,))
    hdim, nl = config.hidden_size, config.num_layers
    t, m, v, m_hat, v_hat, denom = features.adam_moments(g, state, config)
    nominal = m_hat / denom
    feats = _lstm_features(g, nominal, denom, config)
    out, hs, cs = cell.run_lstm(
        phi, feats, ops.reshape(state["h"], (-1, nl, hdim)),
        ops.reshape(state["c"], (-1, nl, hdim)), config, dtype)
    quantities = {"dtype": dtype, "shape": shape, "g": g,
                  "nominal_g": nominal_g, "nominal": nominal, "m": m,
                  "v_hat": v_hat, "out": out,
                  "d": out[:, 0] * config.output_scale}
    update, extra = DESCENT_UPDATES[config.descent](
        phi, quantities, state, config)
    new_state = cell.new_state(state, hs, cs, m, v, t, shape)
    new_state.update(extra)
    return ops.reshape(update, shape), new_state

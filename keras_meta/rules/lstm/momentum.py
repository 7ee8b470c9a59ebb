"""The secant heavy-ball variant (`descent="momentum"`).

The nominal direction is heavy-ball momentum whose rate is set by the
tensor's curvature, measured along the way as in adaptive gradient descent
(Malitsky and Mishchenko, 2020): `L_t` is the largest secant
`||g_t - g_{t-1}|| / ||x_t - x_{t-1}||` seen so far (a lower bound on the
largest Hessian eigenvalue along the path), and

    update = -(exp(log_lr) / L_t) * exp(out_scale * s)
             * (m / (1 - beta_1) + out_scale * d * sqrt(v_hat))

with the *uncorrected* first moment `m`. Until a curvature has been seen
(the first step) the update is a probe of RMS size `MOMENTUM_PROBE_STEP`
along `-g`. A zero output layer is heavy ball with rate `exp(log_lr) / L_t`
and momentum `beta_1`; the rule is invariant to the scale of the loss and
of the curvature.
"""

from keras import ops

from keras_meta.rules.lstm import features
from keras_meta.rules.lstm.config import MOMENTUM_PROBE_STEP


def secant_curvature(g, state):
    """max(previous, ||g - g_prev|| / ||dx_prev||): the curvature seen so far.

    0 until a step has been taken (and while steps are zero); a ratio that
    is not finite leaves the previous value.
    """
    g_prev = ops.reshape(state["g_prev"], (-1,))
    dx = ops.reshape(state["dx"], (-1,))
    # sqrt(sum x^2 + tiny): finite derivatives at 0.
    secant = ops.sqrt(ops.sum(ops.square(g - g_prev)) + 1e-30) / ops.sqrt(
        ops.sum(ops.square(dx)) + 1e-30)
    secant = ops.where(ops.greater(state["t"], 0.0), secant, 0.0)
    return ops.maximum(state["curv"], features.finite_or_zero(secant))


def update(phi, q, state, config):
    """The flat update and the extra state (`g_prev`, `dx`, `curv`).

    Args:
        phi: the meta-parameter dict.
        q: the coordinatewise step's quantities (`coordinate.py`): flat
            `g`, uncorrected moment `m`, `v_hat`, LSTM outputs `out`,
            scaled direction output `d`, `dtype`, `shape`.
        state: the tensor's state dict.
        config: the `RuleConfig`.
    """
    g, dtype = q["g"], q["dtype"]
    s = q["out"][:, 1] * config.output_scale
    curv = secant_curvature(g, state)
    seen = ops.greater(curv, 0.0)
    rate = ops.exp(ops.cast(phi["log_lr"], dtype)) / ops.where(
        seen, curv, ops.ones_like(curv))
    heavy_ball = q["m"] / (1.0 - config.beta_1)
    learned = -rate * ops.exp(s) * (heavy_ball + q["d"] * ops.sqrt(q["v_hat"]))
    probe = -MOMENTUM_PROBE_STEP * g / ops.sqrt(
        ops.mean(ops.square(g)) + 1e-30)
    flat = ops.where(seen, learned, probe)
    extra = {"g_prev": ops.reshape(g, q["shape"]),
             "dx": ops.reshape(flat, q["shape"]), "curv": curv}
    return flat, extra

"""The coordinatewise LSTM update rule, as pure differentiable functions.

This module is the single functional core of keras_meta's learned optimizer
(Andrychowicz et al., 2016, "Learning to learn by gradient descent by gradient
descent"). Everything here is a pure function of tensors:

    updates, new_state = apply(phi, grads, state, config)

* `phi` is a flat `dict` of tensors (the meta-parameters: LSTM kernels and
  biases, the output layer, a log learning rate). It holds nothing per
  coordinate, so the same phi drives every tensor of every model.
* `state` is per coordinate: for a gradient of shape `S` it is a dict with
  LSTM hidden and cell states of shape `S + (num_layers * hidden_size,)`,
  first and second gradient moments of shape `S` and a scalar step count.
* `updates` has the gradient's shape and is *added* to the parameter.

`keras_meta.LearnedOptimizer.update_step` and the unrolled meta-trainer in
`keras_meta.meta` both call `apply`; the meta-trainer differentiates through
it with respect to `phi`. `grads` and `state` may be a single tensor / state
dict, or matching lists of them.

The rule (default `descent="adam"`):

    features  = [preprocess(g) (2 values), m_hat / (sqrt(v_hat) + eps),
                 clip(g / (sqrt(v_hat) + eps), -5, 5)]
    h         = LSTM_2(LSTM_1(features))            # 2 layers x 20, shared
    d, s      = W_out h + b_out                     # two outputs per coord.
    update    = -exp(log_lr) * exp(out_scale * s) * (m_hat / (sqrt(v_hat)+eps)
                                                      + out_scale * d)

i.e. the LSTM modulates (per coordinate and per step) the magnitude of a
nominal Adam-like descent direction and adds its own direction `d`. With
`descent="none"` the rule is the paper's: `update = out_scale * d` with the
paper's two preprocessing features as the only input. With `descent="sgd"`
(the learned inner loop of `keras_meta.MAML`, Ravi and Larochelle 2017 in
spirit) the nominal direction is the plain gradient at the fixed rate
`config.init_lr`, and phi has no `log_lr` (the output bias of `s` is the
learned log-scale of the rate):

    update    = -init_lr * exp(out_scale * s) * (g + out_scale * d)

so a zero output layer gives exactly `-init_lr * g`, one step of plain SGD.

With `descent="momentum"` the nominal direction is heavy-ball momentum
whose rate is set by the tensor's curvature, measured along the way as in
adaptive gradient descent (Malitsky and Mishchenko, 2020): `L_t` is the
largest secant `||g_t - g_{t-1}|| / ||x_t - x_{t-1}||` seen so far (a lower
bound on the largest Hessian eigenvalue along the path), and

    update    = -(exp(log_lr) / L_t) * exp(out_scale * s)
                * (m / (1 - beta_1) + out_scale * d * sqrt(v_hat))

with the *uncorrected* first moment `m` (the sum of past gradients decayed
by `beta_1`). Until a curvature has been seen (the first step) the update is
a probe of RMS size `MOMENTUM_PROBE_STEP` along `-g`. A zero output layer is
heavy ball with rate `exp(log_lr) / L_t` and momentum `beta_1`; the rule is
invariant to the scale of the loss and of the curvature, and made for
problems whose curvature matters more than their noise (the paper's
quadratics, `weights="quadratic"`).

With `granularity="tensor"` (the shipped default weights) the LSTM runs once
per tensor instead of once per coordinate. Its inputs are scale-free
statistics of the whole tensor (`tensor_features`); it keeps a per-tensor
log step-size offset that moves by a hypergradient term plus its own
output, and scales Adam's direction for the whole tensor:

    offset    = clip(offset + hyper_rate * cos(g_t, d_{t-1}) + o_0)
    update    = -exp(log_lr + offset + o_1) * (m_hat / (sqrt(v_hat) + eps)
                                               + o_2 * clip(g / sqrt(v_hat)))

(`d` is Adam's previous direction; `o = output_scale * (W_out h + b_out)`),
so a step costs a few elementwise passes more than Adam. With
`hyper_horizon=H > 1` (the shipped default: 100) the hypergradient cosine
is taken against `u_{t-1}`, an average of past directions with decay
`1 - 1/H`, instead of `d_{t-1}`: a step-size signal over about H steps,
less biased towards small steps than the one-step one. `min_offset` and
`max_offset` bound the offset (shipped: 10x below to 100x above the base
rate), a trust region for runs longer than meta-training's.

Preprocessing (paper, appendix A) with p = 10:

    preprocess(x) = (log|x| / p, sign x)   if |x| >= exp(-p)
                    (-1, exp(p) x)         otherwise
"""

import dataclasses
import math

import numpy as np
from keras import ops

DESCENTS = ("adam", "none", "sgd", "momentum")
GRANULARITIES = ("coordinate", "tensor")
# RMS size of the first step of a "momentum" rule, before any curvature.
MOMENTUM_PROBE_STEP = 1e-3
# Features of the per-tensor rule (see `tensor_features`).
NUM_TENSOR_FEATURES = 6
# Widest range of the per-tensor log learning-rate offset from phi["log_lr"];
# RuleConfig.min_offset / max_offset narrow it.
_LOG_LR_OFFSET_RANGE = (-12.0, 8.0)
# phi keys whose arrays are LSTM / output layer weights (plus "log_lr").
_MIN_EPS = 1e-30


@dataclasses.dataclass(frozen=True)
class RuleConfig:
    """Architecture of the update rule (not its trained values).

    Attributes:
        hidden_size: units per LSTM layer (paper: 20).
        num_layers: stacked LSTM layers (paper: 2).
        preprocess_p: the `p` of the log/sign gradient preprocessing (10).
        descent: `"adam"` (LSTM modulates a nominal Adam direction),
            `"none"` (the paper's pure LSTM output), `"sgd"` (LSTM
            modulates the plain gradient at the fixed rate `init_lr`) or
            `"momentum"` (LSTM modulates heavy-ball momentum whose rate
            follows a secant estimate of the curvature).
        output_scale: scale of the LSTM's linear outputs (paper: 0.1).
        beta_1: decay of the first-moment average used in the features.
        beta_2: decay of the second-moment average used in the features.
        epsilon: added to `sqrt(v_hat)`.
        init_lr: initial `exp(phi["log_lr"])` for `init_phi`; with
            `descent="sgd"`, the fixed nominal SGD rate.
        granularity: `"coordinate"` (the paper's: an LSTM state per
            coordinate) or `"tensor"` (one LSTM state per tensor that
            steers Adam's step size for the whole tensor; see
            `_apply_tensor`). Costs about 1.5x Adam instead of ~100x.
        init_hyper_rate: initial `phi["hyper_rate"]` of a `"tensor"` rule
            (for `init_phi`): the gain of the hypergradient feature on the
            log learning rate.
        init_lr_drift: initial constant change of a `"tensor"` rule's log
            step size per step (the output bias of `o_0`, for `init_phi`);
            a small positive drift offsets the hypergradient's known
            preference for too-small steps under minibatch noise.
        hyper_down_fraction: a `"tensor"` rule's gain on negative
            hypergradient cosines, as a fraction of `hyper_rate` (1: the
            plain hypergradient). Below 1 the step size falls more slowly
            than it rises, against the same short-horizon bias.
        hyper_horizon: a `"tensor"` rule's hypergradient horizon in steps.
            1 (the default): `cos(g_t, d_{t-1})`, the one-step
            hypergradient. Above 1: `cos(g_t, u_{t-1})`, `u` an average of
            past directions with decay `1 - 1/hyper_horizon`, i.e. the
            derivative of the current loss with respect to a step size held
            over about that many past steps. Costs one more tensor of state.
        min_offset, max_offset: a `"tensor"` rule's range of the log
            step-size offset (defaults -12 and 8: practically unbounded).
            `(log(1/F), log(G))` keeps every tensor's step size between F
            times below and G times above its meta-learned base rate
            (before the LSTM's own `o_1`): a trust region against the
            hypergradient decaying or raising rates without end on runs
            longer than it was meta-trained for.
    """

    hidden_size: int = 20
    num_layers: int = 2
    preprocess_p: float = 10.0
    descent: str = "adam"
    output_scale: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-8
    init_lr: float = 1e-2
    granularity: str = "coordinate"
    init_hyper_rate: float = 0.05
    init_lr_drift: float = 0.0
    hyper_down_fraction: float = 1.0
    hyper_horizon: float = 1.0
    min_offset: float = -12.0
    max_offset: float = 8.0

    def __post_init__(self):
        if self.descent not in DESCENTS:
            raise ValueError(
                f"descent must be one of {DESCENTS}, got {self.descent!r}."
            )
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {GRANULARITIES}, got "
                f"{self.granularity!r}."
            )
        if self.granularity == "tensor" and self.descent != "adam":
            raise ValueError(
                "granularity='tensor' needs descent='adam' (the per-tensor "
                f"LSTM modulates Adam's direction); got descent={self.descent!r}."
            )
        if not self.hyper_horizon >= 1.0:
            raise ValueError(
                f"hyper_horizon must be >= 1 (steps), got {self.hyper_horizon!r}."
            )
        low, high = _LOG_LR_OFFSET_RANGE
        if not (low <= self.min_offset <= 0.0 <= self.max_offset <= high):
            raise ValueError(
                f"Need {low} <= min_offset <= 0 <= max_offset <= {high}; got "
                f"min_offset={self.min_offset!r}, max_offset={self.max_offset!r}."
            )
        if self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError(
                "hidden_size and num_layers must be positive, got "
                f"{self.hidden_size} and {self.num_layers}."
            )

    @property
    def input_size(self):
        if self.granularity == "tensor":
            return NUM_TENSOR_FEATURES
        return 4 if self.descent in ("adam", "momentum") else 2

    @property
    def output_size(self):
        return 3 if self.granularity == "tensor" else 2

    @property
    def state_size(self):
        return self.num_layers * self.hidden_size

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"Unknown RuleConfig fields {sorted(unknown)}; expected a "
                f"subset of {sorted(known)}."
            )
        return cls(**d)


def phi_shapes(config=RuleConfig()):
    """Returns `{name: shape}` of every meta-parameter for `config`."""
    h = config.hidden_size
    shapes = {}
    in_size = config.input_size
    for layer in range(config.num_layers):
        shapes[f"lstm{layer}/kernel"] = (in_size + h, 4 * h)
        shapes[f"lstm{layer}/bias"] = (4 * h,)
        in_size = h
    shapes["out/kernel"] = (h, config.output_size)
    shapes["out/bias"] = (config.output_size,)
    if config.descent != "sgd":
        shapes["log_lr"] = ()
    if config.granularity == "tensor":
        shapes["hyper_rate"] = ()
    return shapes


def init_phi(config=RuleConfig(), seed=0, dtype="float32"):
    """Draws initial meta-parameters as a dict of numpy arrays.

    LSTM kernels are Glorot-uniform, biases zero, the output layer small
    (`N(0, 0.01^2)`) so that an untrained `"adam"` rule is close to Adam
    (and an untrained `"sgd"` rule close to SGD) with learning rate
    `config.init_lr`.
    """
    rng = np.random.default_rng(seed)
    phi = {}
    for name, shape in phi_shapes(config).items():
        if name.endswith("kernel") and name.startswith("lstm"):
            limit = math.sqrt(6.0 / (shape[0] + shape[1]))
            phi[name] = rng.uniform(-limit, limit, size=shape)
        elif name == "out/kernel":
            std = 0.1 if config.descent == "none" else 0.01
            phi[name] = rng.normal(0.0, std, size=shape)
        elif name == "log_lr":
            phi[name] = np.array(math.log(config.init_lr))
        elif name == "hyper_rate":
            phi[name] = np.array(config.init_hyper_rate)
        elif name == "out/bias" and config.granularity == "tensor":
            phi[name] = np.zeros(shape)
            phi[name][0] = config.init_lr_drift / config.output_scale
        else:
            phi[name] = np.zeros(shape)
    return {k: v.astype(dtype) for k, v in phi.items()}


def init_state(shape_or_tensor, config=RuleConfig(), dtype=None):
    """Zero per-coordinate state for a parameter of the given shape.

    Args:
        shape_or_tensor: a shape tuple, or a tensor/variable whose shape and
            dtype are used.
        config: the `RuleConfig`.
        dtype: state dtype; defaults to the tensor's dtype or float32.

    Returns:
        dict with `h`, `c` of shape `shape + (num_layers * hidden_size,)`,
        `m`, `v` of shape `shape` and scalar `t`.
    """
    if hasattr(shape_or_tensor, "shape"):
        shape = tuple(shape_or_tensor.shape)
        dtype = dtype or getattr(shape_or_tensor, "dtype", None)
        dtype = getattr(dtype, "name", dtype)
    else:
        shape = tuple(shape_or_tensor)
    dtype = dtype or "float32"
    return {key: ops.zeros(s, dtype)
            for key, s in state_shapes(shape, config).items()}


def state_keys(config=RuleConfig()):
    """The keys of a state dict of `config`'s rule, in a fixed order."""
    return tuple(state_shapes((), config))


def state_shapes(shape, config=RuleConfig()):
    """Returns `{key: shape}` of the state `init_state(shape)` creates.

    Coordinatewise rules keep LSTM states per coordinate (`shape +
    (state_size,)`); the per-tensor rule keeps one LSTM state per tensor
    (`(state_size,)`) and a scalar log learning-rate offset `log_lr`.
    Both keep Adam's moments `m`, `v` (of `shape`) and a step count `t`.
    A per-tensor rule with `hyper_horizon > 1` also keeps its average of
    past directions `u`; `descent="momentum"` keeps the previous gradient
    and update and the largest secant curvature seen (`_secant_curvature`).
    """
    shape = tuple(shape)
    if config.granularity == "tensor":
        s = (config.state_size,)
        shapes = {"h": s, "c": s, "m": shape, "v": shape, "t": (),
                  "log_lr": ()}
        if config.hyper_horizon > 1.0:
            shapes["u"] = shape
        return shapes
    s = shape + (config.state_size,)
    shapes = {"h": s, "c": s, "m": shape, "v": shape, "t": ()}
    if config.descent == "momentum":
        shapes.update(g_prev=shape, dx=shape, curv=())
    return shapes


def preprocess(x, p=10.0):
    """The paper's gradient preprocessing, stacked on a new last axis.

    Returns `(log|x|/p, sign x)` where `|x| >= exp(-p)` and `(-1, exp(p) x)`
    elsewhere; shape `x.shape + (2,)`. Finite for every finite `x`, and its
    derivative is finite too (the log sees at least `exp(-p)`).
    """
    absx = ops.abs(x)
    threshold = math.exp(-p)
    big = ops.greater_equal(absx, threshold)
    log_part = ops.log(ops.maximum(absx, threshold)) / p
    f1 = ops.where(big, log_part, -ops.ones_like(x))
    f2 = ops.where(big, ops.sign(x), x * math.exp(p))
    return ops.stack([f1, f2], axis=-1)


def _lstm_cell(x, h, c, kernel, bias):
    z = ops.matmul(ops.concatenate([x, h], axis=-1), kernel) + bias
    i, f, g, o = ops.split(z, 4, axis=-1)
    c_new = ops.sigmoid(f + 1.0) * c + ops.sigmoid(i) * ops.tanh(g)
    h_new = ops.sigmoid(o) * ops.tanh(c_new)
    return h_new, c_new


def _run_lstm(phi, x, h_all, c_all, config, dtype):
    """Runs the stacked LSTM on rows `x`; returns (output rows, hs, cs)."""
    hs, cs = [], []
    for layer in range(config.num_layers):
        h, c = _lstm_cell(
            x,
            h_all[:, layer],
            c_all[:, layer],
            ops.cast(phi[f"lstm{layer}/kernel"], dtype),
            ops.cast(phi[f"lstm{layer}/bias"], dtype),
        )
        hs.append(h)
        cs.append(c)
        x = h
    out = ops.matmul(x, ops.cast(phi["out/kernel"], dtype)) + ops.cast(
        phi["out/bias"], dtype
    )
    return out, hs, cs


def _adam_moments(g, state, config):
    """Adam's moments of flat `g`: returns (t, m, v, m_hat, v_hat, denom)."""
    b1, b2 = config.beta_1, config.beta_2
    t = state["t"] + 1.0
    m = b1 * ops.reshape(state["m"], (-1,)) + (1.0 - b1) * g
    v = b2 * ops.reshape(state["v"], (-1,)) + (1.0 - b2) * ops.square(g)
    # beta ** t as exp(t log beta): log taken in Python double precision.
    m_hat = m / (1.0 - ops.exp(t * math.log(b1)))
    v_hat = v / (1.0 - ops.exp(t * math.log(b2)))
    return t, m, v, m_hat, v_hat, ops.sqrt(v_hat) + config.epsilon


def _new_state(state, hs, cs, m, v, t, shape):
    return {
        "h": ops.reshape(ops.stack(hs, axis=1), ops.shape(state["h"])),
        "c": ops.reshape(ops.stack(cs, axis=1), ops.shape(state["c"])),
        "m": ops.reshape(m, shape),
        "v": ops.reshape(v, shape),
        "t": t,
    }


def _finite_or_zero(x):
    # Overflowing sums (gradients beyond ~1e19) give a 0 feature, not NaN.
    return ops.where(ops.isfinite(x), x, ops.zeros_like(x))


def _cosine(a, b):
    # sqrt(sum x^2 + tiny): a finite derivative at x = 0.
    norms = ops.sqrt((ops.sum(ops.square(a)) + 1e-30) *
                     (ops.sum(ops.square(b)) + 1e-30))
    return _finite_or_zero(ops.sum(a * b) / norms)


def _secant_curvature(g, state):
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
    return ops.maximum(state["curv"], _finite_or_zero(secant))


def tensor_features(g, m_old, v_old, nominal, v_hat, is_vector, offset):
    """The per-tensor rule's LSTM inputs, a vector of NUM_TENSOR_FEATURES.

    All are invariant to the scale of the loss, so one phi suits models
    whose gradients differ by orders of magnitude:

    1. cos(g_t, d_{t-1}), d = m / sqrt(v) the previous Adam direction: the
       normalized hypergradient of the log learning rate (Baydin et al.,
       2018): positive when the last step was too short.
    2. cos(g_t, m_{t-1}): agreement with the momentum.
    3. log mean |m_hat / sqrt(v_hat)|: Adam's signal-to-noise ratio, near 0
       while gradients are consistent, about -1.5 when noise dominates.
    4. log(rms g_t / mean sqrt(v_hat)), clipped to [-5, 5]: the gradient's
       size against its running average (negative as it shrinks).
    5. the current log learning-rate offset / 4.
    6. 1 for vectors (biases, scales), 0 for kernels.
    """
    prev_dir = m_old / (ops.sqrt(v_old) + 1e-12)
    snr = ops.log(ops.mean(ops.abs(nominal)) + 1e-8)
    ratio = _finite_or_zero(
        0.5 * ops.log(ops.mean(ops.square(g)) + 1e-30)
        - ops.log(ops.mean(ops.sqrt(v_hat)) + 1e-30))
    return ops.stack([
        _cosine(g, prev_dir),
        _cosine(g, m_old),
        snr,
        ops.clip(ratio, -5.0, 5.0),
        offset / 4.0,
        ops.convert_to_tensor(1.0 if is_vector else 0.0, g.dtype),
    ])


def _apply_tensor(phi, grad, state, config, feature_grad=None):
    """The per-tensor rule: one LSTM step per tensor steers Adam's step size.

        offset_t = clip(offset_{t-1} + hyper_rate * c_t + o_0,
                        min_offset, max_offset)
        c_t      = cos(g_t, d_{t-1}), times hyper_down_fraction if negative
                   (with hyper_horizon H > 1: cos(g_t, u_{t-1}),
                   u_t = (1 - 1/H) u_{t-1} + d_t / H)
        update   = -exp(log_lr + offset_t + o_1)
                    * (m_hat / (sqrt(v_hat) + eps) + o_2 * clip(g / sqrt(v_hat)))

    with `(o_0, o_1, o_2) = output_scale * (W_out h + b_out)`. A zero output
    layer is Adam with hypergradient step-size adaptation.
    """
    dtype = grad.dtype
    shape = ops.shape(grad)
    g = ops.reshape(grad if feature_grad is None else feature_grad, (-1,))
    m_old = ops.reshape(state["m"], (-1,))
    v_old = ops.reshape(state["v"], (-1,))
    t, m, v, m_hat, v_hat, denom = _adam_moments(g, state, config)
    nominal = m_hat / denom
    is_vector = len(grad.shape) <= 1
    feats = tensor_features(g, m_old, v_old, nominal, v_hat, is_vector,
                            state["log_lr"])
    hdim, nl = config.hidden_size, config.num_layers
    out, hs, cs = _run_lstm(
        phi, ops.reshape(feats, (1, -1)),
        ops.reshape(state["h"], (1, nl, hdim)),
        ops.reshape(state["c"], (1, nl, hdim)), config, dtype)
    out = out[0] * config.output_scale
    hyper = ops.cast(phi["hyper_rate"], dtype)
    cos = feats[0]
    if config.hyper_horizon > 1.0:
        u_old = ops.reshape(state["u"], (-1,))
        cos = _cosine(g, u_old)
    if config.hyper_down_fraction != 1.0:
        cos = ops.maximum(cos, 0.0) + config.hyper_down_fraction * ops.minimum(
            cos, 0.0)
    offset = ops.clip(state["log_lr"] + hyper * cos + out[0],
                      config.min_offset, config.max_offset)
    step = ops.exp(ops.cast(phi["log_lr"], dtype) + offset + out[1])
    direction = nominal + out[2] * ops.clip(g / denom, -5.0, 5.0)
    update = -step * direction
    new_state = _new_state(state, hs, cs, m, v, t, shape)
    new_state["log_lr"] = offset
    if config.hyper_horizon > 1.0:
        decay = 1.0 - 1.0 / config.hyper_horizon
        new_state["u"] = ops.reshape(decay * u_old + (1.0 - decay) * nominal,
                                     shape)
    return ops.reshape(update, shape), new_state


def _apply_one(phi, grad, state, config, feature_grad=None):
    if config.granularity == "tensor":
        return _apply_tensor(phi, grad, state, config, feature_grad)
    dtype = grad.dtype
    shape = ops.shape(grad)
    # The nominal "sgd" direction is `grad`; the features and moments see
    # `feature_grad` (the same values, perhaps differentiated otherwise).
    nominal_g = ops.reshape(grad, (-1,))
    g = nominal_g if feature_grad is None else ops.reshape(feature_grad, (-1,))
    hdim, nl = config.hidden_size, config.num_layers
    t, m, v, m_hat, v_hat, denom = _adam_moments(g, state, config)
    nominal = m_hat / denom

    feats = preprocess(g, config.preprocess_p)
    if config.descent in ("adam", "momentum"):
        feats = ops.concatenate(
            [
                feats,
                ops.expand_dims(nominal, -1),
                ops.expand_dims(ops.clip(g / denom, -5.0, 5.0), -1),
            ],
            axis=-1,
        )

    out, hs, cs = _run_lstm(
        phi, feats, ops.reshape(state["h"], (-1, nl, hdim)),
        ops.reshape(state["c"], (-1, nl, hdim)), config, dtype)
    d = out[:, 0] * config.output_scale
    if config.descent == "adam":
        s = out[:, 1] * config.output_scale
        lr = ops.exp(ops.cast(phi["log_lr"], dtype))
        update = -lr * ops.exp(s) * (nominal + d)
    elif config.descent == "sgd":
        s = out[:, 1] * config.output_scale
        update = -config.init_lr * ops.exp(s) * (nominal_g + d)
    elif config.descent == "momentum":
        s = out[:, 1] * config.output_scale
        curv = _secant_curvature(g, state)
        seen = ops.greater(curv, 0.0)
        rate = ops.exp(ops.cast(phi["log_lr"], dtype)) / ops.where(
            seen, curv, ops.ones_like(curv))
        heavy_ball = m / (1.0 - config.beta_1)
        learned = -rate * ops.exp(s) * (heavy_ball + d * ops.sqrt(v_hat))
        probe = -MOMENTUM_PROBE_STEP * g / ops.sqrt(
            ops.mean(ops.square(g)) + 1e-30)
        update = ops.where(seen, learned, probe)
    else:
        update = d
    new_state = _new_state(state, hs, cs, m, v, t, shape)
    if config.descent == "momentum":
        new_state.update(g_prev=ops.reshape(g, shape),
                         dx=ops.reshape(update, shape), curv=curv)
    return ops.reshape(update, shape), new_state


def apply(phi, grads, state, config=RuleConfig(), feature_grads=None):
    """One step of the update rule.

    Args:
        phi: dict of meta-parameter tensors (see `phi_shapes`).
        grads: a gradient tensor, or a list/tuple of them.
        state: the matching state dict (from `init_state` or a previous
            call), or a list/tuple of them.
        config: the `RuleConfig` phi was made for.
        feature_grads: optional, like `grads`: the values the LSTM's
            features and the moments are computed from, where they should
            differ from `grads` in how they are differentiated (e.g.
            `tf.stop_gradient(grads)`: no second derivatives through the
            LSTM's inputs, as Ravi and Larochelle (2017) do, while the
            nominal `"sgd"` direction keeps them). Defaults to `grads`.

    Returns:
        `(updates, new_state)` with the structure of `(grads, state)`;
        updates are to be *added* to the parameters.
    """
    if isinstance(grads, (list, tuple)):
        if len(grads) != len(state):
            raise ValueError(
                f"Got {len(grads)} gradients but {len(state)} states."
            )
        if feature_grads is None:
            feature_grads = [None] * len(grads)
        results = [
            _apply_one(phi, g, s, config, f)
            for g, s, f in zip(grads, state, feature_grads)
        ]
        return [r[0] for r in results], [r[1] for r in results]
    return _apply_one(phi, grads, state, config, feature_grads)

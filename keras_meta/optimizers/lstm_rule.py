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

Preprocessing (paper, appendix A) with p = 10:

    preprocess(x) = (log|x| / p, sign x)   if |x| >= exp(-p)
                    (-1, exp(p) x)         otherwise
"""

import dataclasses
import math

import numpy as np
from keras import ops

DESCENTS = ("adam", "none", "sgd")
STATE_KEYS = ("h", "c", "m", "v", "t")
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
            `"none"` (the paper's pure LSTM output) or `"sgd"` (LSTM
            modulates the plain gradient at the fixed rate `init_lr`).
        output_scale: scale of the LSTM's linear outputs (paper: 0.1).
        beta_1: decay of the first-moment average used in the features.
        beta_2: decay of the second-moment average used in the features.
        epsilon: added to `sqrt(v_hat)`.
        init_lr: initial `exp(phi["log_lr"])` for `init_phi`; with
            `descent="sgd"`, the fixed nominal SGD rate.
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

    def __post_init__(self):
        if self.descent not in DESCENTS:
            raise ValueError(
                f"descent must be one of {DESCENTS}, got {self.descent!r}."
            )
        if self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError(
                "hidden_size and num_layers must be positive, got "
                f"{self.hidden_size} and {self.num_layers}."
            )

    @property
    def input_size(self):
        return 4 if self.descent == "adam" else 2

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
    shapes["out/kernel"] = (h, 2)
    shapes["out/bias"] = (2,)
    if config.descent != "sgd":
        shapes["log_lr"] = ()
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
    s = shape + (config.state_size,)
    return {
        "h": ops.zeros(s, dtype),
        "c": ops.zeros(s, dtype),
        "m": ops.zeros(shape, dtype),
        "v": ops.zeros(shape, dtype),
        "t": ops.zeros((), dtype),
    }


def state_shapes(shape, config=RuleConfig()):
    """Returns `{key: shape}` of the state `init_state(shape)` creates."""
    shape = tuple(shape)
    s = shape + (config.state_size,)
    return {"h": s, "c": s, "m": shape, "v": shape, "t": ()}


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


def _apply_one(phi, grad, state, config, feature_grad=None):
    dtype = grad.dtype
    shape = ops.shape(grad)
    # The nominal "sgd" direction is `grad`; the features and moments see
    # `feature_grad` (the same values, perhaps differentiated otherwise).
    nominal_g = ops.reshape(grad, (-1,))
    g = nominal_g if feature_grad is None else ops.reshape(feature_grad, (-1,))
    hdim, nl = config.hidden_size, config.num_layers
    b1, b2 = config.beta_1, config.beta_2

    t = state["t"] + 1.0
    m = b1 * ops.reshape(state["m"], (-1,)) + (1.0 - b1) * g
    v = b2 * ops.reshape(state["v"], (-1,)) + (1.0 - b2) * ops.square(g)
    # beta ** t as exp(t log beta): log taken in Python double precision.
    m_hat = m / (1.0 - ops.exp(t * math.log(b1)))
    v_hat = v / (1.0 - ops.exp(t * math.log(b2)))
    denom = ops.sqrt(v_hat) + config.epsilon
    nominal = m_hat / denom

    feats = preprocess(g, config.preprocess_p)
    if config.descent == "adam":
        feats = ops.concatenate(
            [
                feats,
                ops.expand_dims(nominal, -1),
                ops.expand_dims(ops.clip(g / denom, -5.0, 5.0), -1),
            ],
            axis=-1,
        )

    h_all = ops.reshape(state["h"], (-1, nl, hdim))
    c_all = ops.reshape(state["c"], (-1, nl, hdim))
    x = feats
    hs, cs = [], []
    for layer in range(nl):
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
    d = out[:, 0] * config.output_scale
    if config.descent == "adam":
        s = out[:, 1] * config.output_scale
        lr = ops.exp(ops.cast(phi["log_lr"], dtype))
        update = -lr * ops.exp(s) * (nominal + d)
    elif config.descent == "sgd":
        s = out[:, 1] * config.output_scale
        update = -config.init_lr * ops.exp(s) * (nominal_g + d)
    else:
        update = d

    new_state = {
        "h": ops.reshape(ops.stack(hs, axis=1), ops.shape(state["h"])),
        "c": ops.reshape(ops.stack(cs, axis=1), ops.shape(state["c"])),
        "m": ops.reshape(m, shape),
        "v": ops.reshape(v, shape),
        "t": t,
    }
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

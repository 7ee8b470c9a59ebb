"""The LSTM rule's meta-parameters (phi) and per-tensor state: shapes and
initial values."""

import math

import numpy as np
from keras import ops

from keras_meta.rules.lstm.config import RuleConfig


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


def state_shapes(shape, config=RuleConfig()):
    """Returns `{key: shape}` of the state `init_state(shape)` creates.

    Coordinatewise rules keep LSTM states per coordinate (`shape +
    (state_size,)`); the per-tensor rule keeps one LSTM state per tensor
    (`(state_size,)`) and a scalar log learning-rate offset `log_lr`.
    Both keep Adam's moments `m`, `v` (of `shape`) and a step count `t`.
    A per-tensor rule with `hyper_horizon > 1` also keeps its average of
    past directions `u`; `descent="momentum"` keeps the previous gradient
    and update and the largest secant curvature seen
    (`momentum.secant_curvature`).
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


def state_keys(config=RuleConfig()):
    """The keys of a state dict of `config`'s rule, in a fixed order."""
    return tuple(state_shapes((), config))


def init_state(shape_or_tensor, config=RuleConfig(), dtype=None):
    """Zero per-coordinate state for a parameter of the given shape.

    Args:
        shape_or_tensor: a shape tuple, or a tensor/variable whose shape and
            dtype are used.
        config: the `RuleConfig`.
        dtype: state dtype; defaults to the tensor's dtype or float32.

    Returns:
        dict with `h`, `c` of shape `shape + (num_layers * hidden_size,)`,
        `m`, `v` of shape `shape` and scalar `t` (see `state_shapes`).
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

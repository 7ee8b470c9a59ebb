"""The normalized rule's meta-parameters and per-tensor state: shapes and
initial values."""

import dataclasses
import math

import numpy as np
import tensorflow as tf

from keras_meta.rules.normalized.config import NormalizedConfig


def meta_param_shapes(config=NormalizedConfig()):
    """Returns `{name: shape}` of every meta-parameter for `config`.

    - `mlp{i}/kernel`, `mlp{i}/bias`: hidden layer `i` of the per-parameter
      MLP; layer 0's kernel reads the per-parameter features, and
      `mlp0/tensor_kernel` the per-tensor features (a per-tensor bias).
    - `out/kernel`, `out/bias`: the MLP's output (one value per parameter).
    - `log_lr`: the log base step size.
    - `schedule/kernel`, `schedule/bias`: the log step-size offset, a linear
      function of the per-tensor features.
    """
    h = config.hidden_size
    shapes = {
        "mlp0/kernel": (config.num_parameter_features, h),
        "mlp0/tensor_kernel": (config.num_tensor_features, h),
        "mlp0/bias": (h,),
    }
    for layer in range(1, config.num_layers):
        shapes[f"mlp{layer}/kernel"] = (h, h)
        shapes[f"mlp{layer}/bias"] = (h,)
    shapes.update({
        "out/kernel": (h, 1),
        "out/bias": (1,),
        "log_lr": (),
        "schedule/kernel": (config.num_tensor_features,),
        "schedule/bias": (),
    })
    return shapes


def init_meta_params(config=NormalizedConfig(), seed=0, dtype="float32"):
    """Initial meta-parameters as a dict of numpy arrays.

    Hidden kernels are Glorot-uniform (drawn with `seed`), everything else
    zero except `log_lr = log(init_lr)`: the MLP's output and the schedule
    are zero, so the rule is Adam's direction, normalized per tensor, at
    step size `init_lr`.
    """
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in meta_param_shapes(config).items():
        if name.startswith("mlp") and "kernel" in name:
            limit = math.sqrt(6.0 / (shape[0] + shape[1]))
            params[name] = rng.uniform(-limit, limit, size=shape)
        elif name == "log_lr":
            params[name] = np.array(math.log(config.init_lr))
        else:
            params[name] = np.zeros(shape)
    return {k: np.asarray(v, dtype) for k, v in params.items()}


def scale_parameter_feature(meta_params, config, scale):
    """The same rule reading `scale * p / rms(p)` as its parameter feature:
    `meta_params` with `mlp0/kernel`'s last row (that feature's weights)
    times `scale`. The parameter feature is how the MLP decays weights by
    their size (a learned weight decay), so `scale` scales that decay's
    input and leaves the gradient features' weights as they are; 0 gives
    the updates of `drop_parameter_feature`.

    Raises:
        ValueError: `config` has no parameter feature, or `scale < 0`.
    """
    if not config.parameter_feature:
        raise ValueError(f"The rule {config} has no parameter feature.")
    if not (isinstance(scale, (int, float)) and not isinstance(scale, bool)
            and scale >= 0):
        raise ValueError(f"scale must be a number >= 0, got {scale!r}.")
    kernel = gate_parameter_feature(meta_params, scale)["mlp0/kernel"]
    return dict(meta_params, **{"mlp0/kernel": kernel.numpy()})


def gate_parameter_feature(meta_params, keep):
    """`meta_params` (tensors) with the parameter feature's weights
    (`mlp0/kernel`'s last row) times the scalar tensor `keep`: 1 leaves
    them bitwise as they are, 0 gives the updates of
    `drop_parameter_feature`."""
    kernel = tf.convert_to_tensor(meta_params["mlp0/kernel"])
    keep = tf.reshape(tf.cast(keep, kernel.dtype), (1,))
    ones = tf.ones((kernel.shape[0] - 1,), kernel.dtype)
    scale = tf.concat([ones, keep], 0)[:, None]
    return dict(meta_params, **{"mlp0/kernel": kernel * scale})


def drop_parameter_feature(meta_params, config):
    """The same rule without its parameter feature: `(meta_params, config)`
    with `mlp0/kernel`'s last row (the weights of `p / rms(p)`) removed
    and `parameter_feature=False`. Equal to zeroing that row.

    Raises:
        ValueError: `config` has no parameter feature.
    """
    if not config.parameter_feature:
        raise ValueError(f"The rule {config} has no parameter feature.")
    params = dict(meta_params)
    params["mlp0/kernel"] = np.asarray(params["mlp0/kernel"])[:-1]
    return params, dataclasses.replace(config, parameter_feature=False)


def state_keys(config=NormalizedConfig()):
    """The keys of one tensor's state, in a fixed order: `m0`, `m1`, ...
    (one per kept momentum, `config.num_kept_momenta`), `v`, `t`, then
    `offset` (the hypergradient's log step-size offset) where
    `config.adapts_step_size`."""
    keys = tuple(f"m{i}" for i in range(config.num_kept_momenta)) + (
        "v", "t")
    return keys + (("offset",) if config.adapts_step_size else ())


def factored_rows_cols(shape, config=NormalizedConfig()):
    """`(rows, cols)` of the matrix view of a tensor whose second moment
    is factored (`config.factored_second_moment` and rank >= 2: `cols`
    its last axis), else None."""
    shape = tuple(shape)
    if not (config.factored_second_moment and len(shape) >= 2):
        return None
    if any(d is None for d in shape):
        raise ValueError(
            "factored_second_moment needs a tensor of known shape, got "
            f"{shape}.")
    return int(np.prod(shape[:-1])), int(shape[-1])


def state_shapes(shape, config=NormalizedConfig()):
    """`{key: shape}` of one tensor's state: the momenta shaped like the
    tensor, `v` too (or `(rows + cols,)` where `factored_rows_cols`
    applies: the row averages, then the column averages), the step count
    `t` and the `offset` scalars."""
    shape = tuple(shape)
    factored = factored_rows_cols(shape, config)
    v_shape = shape if factored is None else (sum(factored),)
    return {key: (() if key in ("t", "offset") else
                  v_shape if key == "v" else shape)
            for key in state_keys(config)}


def storage_dtypes(dtype, config=NormalizedConfig()):
    """`{key: dtype}` a Keras optimizer stores one tensor's state in, for a
    variable of `dtype`: `dtype`, or bfloat16 for the momenta that
    `config.bfloat16_momenta` names and for `v` under
    `config.bfloat16_second_moment`, where `dtype` is float32."""
    dtype = tf.as_dtype(dtype)
    compact = set()
    if dtype == tf.float32:
        compact = {f"m{i}" for i, decay in enumerate(config.momentum_decays)
                   if decay <= config.bfloat16_max_decay
                   and config.bfloat16_momenta}
        if config.bfloat16_second_moment:
            compact.add("v")
    return {key: tf.bfloat16 if key in compact else dtype
            for key in state_keys(config)}


def init_state(value, config=NormalizedConfig()):
    """Zero state for the tensor `value` (its shape and dtype)."""
    return {key: tf.zeros(s, value.dtype)
            for key, s in state_shapes(value.shape, config).items()}

"""`apply_one` (one step for one tensor) and `NormalizedMLPRule`, the rule
under the `keras_meta.rules.UpdateRule` contract."""

import functools
import math

import tensorflow as tf

from keras_meta.rules.base import UpdateRule
from keras_meta.rules.normalized import params
from keras_meta.rules.normalized.config import NormalizedConfig


def _bias_correction(decay, t):
    """`1 / (1 - decay ** t)`, with `decay ** t` as `exp(t log decay)`."""
    if decay == 0.0:
        return tf.ones_like(t)
    return 1.0 / (1.0 - tf.exp(t * math.log(decay)))


def _rms(x):
    return tf.sqrt(tf.reduce_mean(tf.square(x)))


def tensor_features(t, is_vector, config, dtype):
    """The per-tensor features after `t` steps: `tanh(t / tau)` for each
    progress timescale, then 1 for vectors (biases, scales), 0 for kernels."""
    t = tf.cast(t, dtype)
    progress = [tf.tanh(t / tau) for tau in config.progress_timescales]
    return tf.stack(progress + [tf.constant(float(is_vector), dtype)])


def step_size(meta_params, t, is_vector, config, dtype="float32"):
    """The step size of a tensor's `t`-th step (1-based):
    `exp(clip(log_lr) + B tanh(schedule(features) / B))`, within `lr_range`
    and `B = max_schedule_offset` of it, times the anytime decay
    `(decay_start / max(t, decay_start)) ** decay_power` and, where
    `total_steps` is known, the cooldown `clip((total_steps - t + 1) /
    (cooldown_fraction * total_steps), 0, 1)`."""
    feats = tensor_features(t, is_vector, config, dtype)
    low, high = (math.log(x) for x in config.lr_range)
    base = tf.clip_by_value(tf.cast(meta_params["log_lr"], dtype), low, high)
    z = tf.reduce_sum(feats * tf.cast(meta_params["schedule/kernel"], dtype))
    z = z + tf.cast(meta_params["schedule/bias"], dtype)
    bound = config.max_schedule_offset
    size = tf.exp(base + bound * tf.tanh(z / bound))
    if config.decay_power:
        start = tf.constant(config.decay_start, dtype)
        t = tf.cast(t, dtype)
        size = size * tf.pow(start / tf.maximum(t, start), config.decay_power)
    if config.total_steps is not None:
        total = float(config.total_steps)
        left = (total + 1.0 - tf.cast(t, dtype)) / (
            config.cooldown_fraction * total)
        size = size * tf.clip_by_value(left, 0.0, 1.0)
    return size


def _hypergradient_offset(g, state, inv, config):
    """The new log step-size offset: the old one plus `hyper_rate` times
    the cosine between `g` and the previous step's preconditioned momentum
    `m_k * inv` (negative cosines scaled by `hyper_down_fraction`), within
    `hyper_offset_range`. The first step's momentum is zero: cosine 0."""
    dtype = g.dtype
    past = tf.reshape(state[f"m{config.hyper_momentum}"], (-1,)) * inv
    norms = tf.norm(g) * tf.norm(past)
    cos = tf.math.divide_no_nan(tf.reduce_sum(g * past), norms)
    cos = tf.maximum(cos, 0.0) + config.hyper_down_fraction * tf.minimum(
        cos, 0.0)
    low, high = config.hyper_offset_range
    return tf.clip_by_value(tf.cast(state["offset"], dtype)
                            + config.hyper_rate * cos, low, high)


def _touched_rows(indices, rows):
    """How often a sparse gradient's `indices` touch each of `rows`
    (float32 `[rows]`; a segment sum, which XLA compiles, not `tf.unique`)."""
    indices = tf.reshape(tf.convert_to_tensor(indices), (-1,))
    return tf.math.unsorted_segment_sum(
        tf.ones_like(indices, tf.float32), indices, rows)


def _dense(inputs, kernel, bias):
    """`relu(inputs @ kernel + bias)` for a list of `[N]` tensors, one
    output unit at a time: elementwise ops only, which XLA fuses into one
    pass over the parameters (a `[N, hidden]` matmul would not be fused)."""
    return [tf.nn.relu(bias[j] + tf.add_n([x * kernel[i, j]
                                           for i, x in enumerate(inputs)]))
            for j in range(kernel.shape[1])]


def mlp_output(meta_params, features, tensor_feats, config):
    """The MLP's output for the per-parameter features (a list of
    `num_parameter_features` tensors of shape `[N]`): shape `[N]`.

    The per-tensor features enter the first layer as a bias, computed once
    per tensor. With `config.antisymmetric` the output is
    `(MLP(f) - MLP(-f)) / 2`: odd in the features, so it flips with the
    signs of the gradient and the parameter and has no constant drift.
    """
    if config.antisymmetric:
        if config.num_layers == 1:
            return _odd_one_layer_mlp(meta_params, features, tensor_feats)
        negated = [-f for f in features]
        return 0.5 * (_mlp(meta_params, features, tensor_feats, config)
                      - _mlp(meta_params, negated, tensor_feats, config))
    return _mlp(meta_params, features, tensor_feats, config)


def _getter(meta_params, dtype):
    return lambda name: tf.cast(meta_params[name], dtype)


def _first_layer_bias(get, tensor_feats):
    """Layer 0's bias for this tensor: its own plus the per-tensor
    features' contribution."""
    return tf.linalg.matvec(get("mlp0/tensor_kernel"), tensor_feats,
                            transpose_a=True) + get("mlp0/bias")


def _output(get, hidden):
    kernel = get("out/kernel")
    return get("out/bias")[0] + tf.add_n(
        [h * kernel[j, 0] for j, h in enumerate(hidden)])


def _odd_one_layer_mlp(meta_params, features, tensor_feats):
    """`(MLP(f) - MLP(-f)) / 2` for one hidden layer with each unit's
    pre-activation `z` computed once: `MLP(-f)` sees `bias - z`, which is
    bitwise what the negated features give (negation is exact and the sum
    is symmetric), for half of the layer's arithmetic."""
    get = _getter(meta_params, features[0].dtype)
    bias, kernel = _first_layer_bias(get, tensor_feats), get("mlp0/kernel")
    z = [tf.add_n([x * kernel[i, j] for i, x in enumerate(features)])
         for j in range(kernel.shape[1])]
    plus = [tf.nn.relu(bias[j] + zj) for j, zj in enumerate(z)]
    minus = [tf.nn.relu(bias[j] + -zj) for j, zj in enumerate(z)]
    return 0.5 * (_output(get, plus) - _output(get, minus))


def _without_dropped_momenta(meta_params, config):
    """`meta_params` with the first kernel's rows of the momenta the rule
    does not keep (`config.kept_momenta`) removed: their features are 0,
    so the MLP's output is the same without them."""
    kept, known = config.num_kept_momenta, len(config.momentum_decays)
    if kept == known:
        return meta_params
    rows = list(range(kept + 1)) + list(
        range(known + 1, config.num_parameter_features))
    return {**meta_params, "mlp0/kernel": tf.gather(
        tf.convert_to_tensor(meta_params["mlp0/kernel"]), rows)}


def _mlp(meta_params, features, tensor_feats, config):
    """The plain MLP of `mlp_output`."""
    get = _getter(meta_params, features[0].dtype)
    hidden = _dense(features, get("mlp0/kernel"),
                    _first_layer_bias(get, tensor_feats))
    for layer in range(1, config.num_layers):
        hidden = _dense(hidden, get(f"mlp{layer}/kernel"),
                        get(f"mlp{layer}/bias"))
    return _output(get, hidden)


def _moments(g, state, shape, static_shape, config):
    """Updated momenta and `v` (into a new state dict) and the bias-corrected
    momenta and `1 / (sqrt(v_hat) + eps)`, for the flat gradient `g` of a
    tensor of shape `shape` (`static_shape` its static shape)."""
    t = state["t"] + 1.0
    new_state = {"t": t}
    corrected = []
    for i, decay in enumerate(
            config.momentum_decays[:config.num_kept_momenta]):
        m = decay * tf.reshape(state[f"m{i}"], (-1,)) + (1.0 - decay) * g
        new_state[f"m{i}"] = tf.reshape(m, shape)
        corrected.append(m * _bias_correction(decay, t))
    b2 = config.beta_2
    factored = params.factored_rows_cols(static_shape, config)
    if factored is None:
        v = b2 * tf.reshape(state["v"], (-1,)) + (1.0 - b2) * tf.square(g)
        new_state["v"] = tf.reshape(v, shape)
    else:
        new_state["v"], v = _factored_second_moment(g, state["v"], factored,
                                                    b2)
    inv = 1.0 / (tf.sqrt(v * _bias_correction(b2, t)) + config.epsilon)
    return new_state, corrected, inv


def _advance(g, state, shape, static_shape, config):
    """`_moments`, with the new state's hypergradient offset where the
    rule adapts its step size."""
    new_state, corrected, inv = _moments(g, state, shape, static_shape,
                                         config)
    if config.adapts_step_size:
        new_state["offset"] = _hypergradient_offset(g, state, inv, config)
    return new_state, corrected, inv


def next_state(grad, state, config):
    """The state `apply_one` returns for `grad`, without the update: it
    reads only the gradient and the state."""
    return _advance(tf.reshape(grad, (-1,)), state, tf.shape(grad),
                    grad.shape, config)[0]


def _factored_second_moment(g, old, rows_cols, b2):
    """Adafactor's second moment: the new `[rows + cols]` state (row and
    column averages of `g**2` over the `[rows, cols]` view of the flat
    `g`) and the `[N]` estimate `row[i] * col[j] / mean(row)` (0 where
    every average is 0, as Adam's `v` is)."""
    rows, cols = rows_cols
    square = tf.reshape(tf.square(g), (rows, cols))
    row = b2 * old[:rows] + (1.0 - b2) * tf.reduce_mean(square, axis=1)
    col = b2 * old[rows:] + (1.0 - b2) * tf.reduce_mean(square, axis=0)
    scale = tf.math.divide_no_nan(1.0, tf.reduce_mean(row))
    v = (row * scale)[:, None] * col[None, :]
    return tf.concat([row, col], 0), tf.reshape(v, (-1,))


# Gradients at least this large in magnitude are refused by the checked
# step: g**2 in `v` overflows float32 from about 1.8e19.
GRADIENT_BOUND = 1e15


def _inputs_ok_and_sum_of_squares(g, p):
    """Whether `g` is finite with |g| < GRADIENT_BOUND and `p` finite, and
    p's sum of squares (float32, so that float16 parameters do not
    overflow it): one reduction, so one pass over `g` and `p`
    (`abs(nan) < bound` is False)."""
    bad = tf.where(tf.abs(tf.cast(g, tf.float32)) < GRADIENT_BOUND, 0.0,
                   math.inf)
    total = tf.reduce_sum(tf.square(tf.cast(p, tf.float32)) + bad)
    return tf.math.is_finite(total), total


def apply_one(meta_params, grad, state, value, config, weight_decay=0.0,
              check_inputs=False):
    """One step of the rule for one tensor.

    Args:
        meta_params: the meta-parameter dict (`params.meta_param_shapes`).
        grad: the gradient tensor.
        state: its state dict (`params.state_shapes`).
        value: the parameter tensor.
        config: the `NormalizedConfig`.
        weight_decay: the decoupled weight-decay coefficient.
        check_inputs: also return whether the inputs give a finite step
            (see `NormalizedMLPRule.update_checked`).

    Returns:
        `(update, new_state)`, `update` shaped like `grad`; with
        `check_inputs`, `(update, new_state, ok)`.
    """
    dtype = grad.dtype
    shape = tf.shape(grad)
    g = tf.reshape(grad, (-1,))
    p = tf.reshape(tf.cast(value, dtype), (-1,))
    rms_p = None
    if check_inputs:
        ok, total = _inputs_ok_and_sum_of_squares(g, p)
        ok = tf.logical_and(ok, tf.reduce_all([
            tf.reduce_all(tf.math.is_finite(tf.cast(x, dtype)))
            for x in tf.nest.flatten(meta_params)]))
        rms_p = tf.cast(tf.sqrt(total / tf.cast(tf.size(p), tf.float32)),
                        dtype)
    new_state, corrected, inv = _advance(g, state, shape, grad.shape,
                                         config)
    t = new_state["t"]
    direction = corrected[0] * inv
    is_vector = len(grad.shape) <= 1
    if not (is_vector and config.mlp_tensors == "matrices"):
        features = [g * inv] + [m * inv for m in corrected]
        if config.parameter_feature:
            features.append(tf.math.divide_no_nan(
                p, _rms(p) if rms_p is None else rms_p))
        tensor_feats = tensor_features(t, is_vector, config, dtype)
        direction = direction + config.output_scale * mlp_output(
            _without_dropped_momenta(meta_params, config), features,
            tensor_feats, config)
    if config.normalize == "tensor":
        direction = tf.math.divide_no_nan(direction, _rms(direction))
    rate = step_size(meta_params, t, is_vector, config, dtype)
    if config.adapts_step_size:
        rate = rate * tf.exp(new_state["offset"])
    if weight_decay:
        direction = direction + weight_decay * p
    update = tf.reshape(-rate * direction, shape)
    if check_inputs:
        return update, new_state, ok
    return update, new_state


@functools.lru_cache(maxsize=None)
def _step_function(config, weight_decay, jit_compile, check_inputs=False):
    """One tensor's step for `config`, shared by every rule of that config
    (so that each shape is compiled once per process)."""

    def one(meta_params, grad, state, value):
        return apply_one(meta_params, grad, state, value, config, weight_decay,
                         check_inputs)

    return tf.function(one, jit_compile=True) if jit_compile else one


class NormalizedMLPRule(UpdateRule):
    """A per-parameter MLP over Adam-like, scale-free features whose
    direction is normalized per tensor at every step (Celo2-style).

    For each tensor, with `t` the steps taken (from the state, not `step`):

        m_i     = EMA_{decay_i}(g), v = EMA_{beta_2}(g^2), bias-corrected
        feats   = [g, m_0, m_1, ...] / (sqrt(v_hat) + eps), p / rms(p)
                  (the last with `config.parameter_feature`)
        d       = m_0_hat / (sqrt(v_hat) + eps)
                  + output_scale * MLP(feats; tanh(t / tau), is_vector)
        d       = d / rms(d)                       (over the tensor)
        lr_t    = exp(clip(log_lr, lr_range)
                      + B tanh(schedule(tanh(t / tau), is_vector) / B)
                      + offset_t) * (s / max(t, s)) ** decay_power
        update  = -lr_t * (d + weight_decay * p)

    (`s = config.decay_start`; with `config.mlp_tensors="matrices"`
    vectors get `d` without the MLP's term.)

    `offset_t` is 0 unless `config.hyper_rate > 0`: then a per-tensor log
    offset that follows the hypergradient (see `NormalizedConfig`), so
    each tensor's step size adapts to the problem within a trust region.

    With the MLP's output layer and the schedule at zero (as
    `init_meta_params` makes them) the rule is Adam's direction,
    RMS-normalized per tensor, at step size `exp(log_lr)`. Every feature,
    hence the update, is invariant to the scale of the loss (up to `eps`).
    Weight decay is decoupled (AdamW's meaning) and scales with the rule's
    actual step size `lr_t`. State per parameter: one float per kept
    momentum (`config.kept_momenta`) and `v` (with
    `config.factored_second_moment`, `v` of a matrix is one float per row
    and per column).

    `meta_params` is a dict of tensors (`params.meta_param_shapes(config)`);
    the state is a list of per-tensor dicts (`params.state_shapes`).

    Args:
        config: the `NormalizedConfig`.
        weight_decay: the decoupled weight-decay coefficient (>= 0).
        jit_compile: run each tensor's step as one XLA-compiled function
            (`tf.function(jit_compile=True)`), which fuses the MLP's
            elementwise work into a pass or two over the parameters; False
            runs the same ops uncompiled (many times slower on large
            tensors), e.g. where a caller cannot nest a compiled function.
    """

    def __init__(self, config=NormalizedConfig(), weight_decay=0.0,
                 jit_compile=True):
        if not weight_decay >= 0.0:
            raise ValueError(
                f"weight_decay must be >= 0, got {weight_decay!r}.")
        self.config = config
        self.weight_decay = float(weight_decay)
        self.jit_compile = bool(jit_compile)
        self._apply_one = _step_function(config, self.weight_decay,
                                         self.jit_compile)

    @property
    def checks_inputs(self):
        """Whether `update_checked` applies: without hypergradient step
        sizes (whose cosine multiplies gradients), finite inputs with
        |g| < GRADIENT_BOUND and meta-parameters of ordinary size give a
        finite update and state (`v` holds g**2; every feature is bounded
        by |g| / eps)."""
        return not self.config.adapts_step_size

    def update_checked(self, meta_params, grads, state, values, step):
        """`update` for one tensor, and whether its inputs are fit for a
        step: the gradient finite with |g| < GRADIENT_BOUND, the
        parameter and meta-parameters finite. Checked in the same pass
        that computes rms(p), so that a caller that skips unfit steps
        needs no pass over the results (see `checks_inputs`).

        Returns:
            `([update], [new_state], ok)`.
        """
        del step
        if not self.checks_inputs:
            raise ValueError(
                "update_checked needs a rule without hypergradient step "
                f"sizes; this one has hyper_rate={self.config.hyper_rate}.")
        if not len(grads) == len(state) == len(values) == 1:
            raise ValueError(
                "update_checked takes one tensor; got "
                f"{len(grads)} gradients, {len(state)} states and "
                f"{len(values)} values.")
        (g,), (s,), (v,) = grads, state, values
        update, new_state, ok = _step_function(
            self.config, self.weight_decay, self.jit_compile, True)(
                meta_params, g, s, v)
        return [update], [new_state], ok

    def table_step(self, meta_params, indices, rows):
        """`config.dense_table_decay` False: without the learned decay
        (`params.gate_parameter_feature`) for a step whose sparse `indices`
        touch every one of the table's `rows`. `config.lazy_tables`: the
        step changes only the rows `indices` touch."""
        decay_everywhere = (self.config.dense_table_decay
                            or not self.config.parameter_feature)
        if decay_everywhere and not self.config.lazy_tables:
            return meta_params, None
        hits = _touched_rows(indices, rows)
        if not decay_everywhere:
            meta_params = params.gate_parameter_feature(
                meta_params, tf.cast(tf.reduce_any(hits == 0.0), tf.float32))
        return meta_params, (hits > 0.0 if self.config.lazy_tables else None)

    def next_state(self, grads, state):
        """The state `update` returns, computed apart from the update: it
        reads neither the parameters nor the meta-parameters, so a caller
        may write the parameters first (`variable_step.state_and_assign`).
        """
        return [next_state(tf.convert_to_tensor(g), s, self.config)
                for g, s in zip(grads, state)]

    def init(self, values):
        return [params.init_state(tf.convert_to_tensor(v), self.config)
                for v in values]

    def state_shapes(self, shape):
        """`{key: shape}` of one tensor's state (`params.state_shapes`)."""
        return params.state_shapes(shape, self.config)

    def storage_dtypes(self, dtype):
        """`params.storage_dtypes`: bfloat16 for the fast momenta of a
        float32 parameter under `config.bfloat16_momenta`, and for its `v`
        under `config.bfloat16_second_moment`."""
        return params.storage_dtypes(dtype, self.config)

    def update(self, meta_params, grads, state, values, step):
        del step
        grads, values = list(grads), list(values)
        if not len(grads) == len(state) == len(values):
            raise ValueError(
                f"Got {len(grads)} gradients, {len(state)} states and "
                f"{len(values)} values.")
        meta_params, grads, state, values = tf.nest.map_structure(
            tf.convert_to_tensor, (meta_params, grads, list(state), values))
        results = [self._apply_one(meta_params, g, s, v)
                   for g, s, v in zip(grads, state, values)]
        return [r[0] for r in results], [r[1] for r in results]

    def step_sizes(self, meta_params, state, values):
        """The step size of each tensor's next step (a list of scalars;
        with hypergradient adaptation, at the current offset)."""
        sizes = []
        for s, v in zip(state, values):
            size = step_size(meta_params, s["t"] + 1.0, len(v.shape) <= 1,
                             self.config, s["t"].dtype)
            if self.config.adapts_step_size:
                size = size * tf.exp(s["offset"])
            sizes.append(size)
        return sizes

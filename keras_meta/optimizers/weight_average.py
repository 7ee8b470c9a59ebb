"""The optimizer's weight average (`use_ema`): kept as Keras keeps it, or
with `compact_ema` as its offset from the weights, in bfloat16.

Keras keeps `average <- m * average + (1 - m) * w` in the variable's dtype:
one float per parameter. The offset `d = average - w` is the weights' drift
over the last `1 / (1 - m)` steps, far smaller than the weights, so
bfloat16's 8 bits of precision are spent on the offset, not on the weight:
the averaged weights `w + d` carry a rounding error of a fraction of `|d|`
(stochastic rounding, `stochastic_rounding`: a decay-0.99 average carries
about 3.5 ulps) instead of a fraction of `|w|`. In two parts, as the
average itself moves:

- when a step changes `w` by `dw`, the average does not move: `d <- d - dw`
  (`reanchor`, in the step that applies `dw`, where it is known);
- each step's averaging, `d <- m * d` (`shrink`, with `m` 0 at the first
  step, as Keras's average starts at the weights).

A step that applies its update can do both in one write (`reanchor` with
`momentum`). Training never reads the average, so a `fit` takes the same
steps with either form; only the averaged weights (`averaged_values`, and
the weights `finalize_variable_values` leaves) differ, by the rounding.
Anything that sets the weights outside a step keeps the offset, so the
average moves with the weights: `reset_to_weights` restarts it. The
momentum `m` is the optimizer's `ema_momentum`, or with its
`ema_window_fraction` a `GrowingMomentum` of the step (`momentum_of`).
"""

import dataclasses

import numpy as np
import tensorflow as tf

from keras_meta.optimizers import stochastic_rounding

# Salt of the offsets' rounding bits, apart from the state slots'
# (`variable_step._write_state` uses `step * len(keys) + number`).
_SALT = 0x5BD1E995


def offset_dtype(dtype):
    """The dtype of a compact offset of a variable of `dtype`: bfloat16 for
    float32 variables, else the variable's own (float16 and bfloat16
    variables gain nothing)."""
    return tf.bfloat16 if tf.as_dtype(dtype) == tf.float32 else tf.as_dtype(
        dtype)


def add_offsets(optimizer, variables, prefixes):
    """A compact average's offsets: zero optimizer variables named
    `<prefix>_average_offset`, in `offset_dtype`; None, as Keras keeps no
    average there, for a variable set from its gradient
    (`overwrite_with_gradient`)."""
    return [None if getattr(variable, "overwrite_with_gradient", False)
            else optimizer.add_variable(
                variable.shape, initializer="zeros",
                dtype=offset_dtype(variable.dtype),
                name=f"{prefix}_average_offset")
            for variable, prefix in zip(variables, prefixes)]


@dataclasses.dataclass(frozen=True)
class GrowingMomentum:
    """The momentum of an average whose window grows with the run:
    `max(base, 1 - 1 / (window_fraction * step))`. Its window is `1 / (1 -
    base)` steps until `step = 1 / (window_fraction * (1 - base))` (1,000
    for 0.99 and 0.1), then `window_fraction` of the steps taken: a tail
    average that needs no length."""

    base: float
    window_fraction: float


def check_window_fraction(fraction, use_ema):
    """`ema_window_fraction` checked: None, or a number in (0, 1] given
    with `use_ema`."""
    if fraction is None:
        return None
    if (isinstance(fraction, (bool, np.bool_))
            or not isinstance(fraction, (int, float, np.floating))
            or not 0 < fraction <= 1):
        raise ValueError("LearnedOptimizer `ema_window_fraction` must be "
                         f"None or a number in (0, 1]; got {fraction!r}.")
    if not use_ema:
        raise ValueError("ema_window_fraction sets the weight average's "
                         "window; it needs use_ema=True (or the default "
                         "weights, whose average is on).")
    return float(fraction)


def momentum_of(optimizer):
    """The `momentum` argument of this module's functions for an optimizer:
    its `ema_momentum`, or with its `ema_window_fraction` a
    `GrowingMomentum`."""
    fraction = getattr(optimizer, "ema_window_fraction", None)
    if fraction is None:
        return optimizer.ema_momentum
    return GrowingMomentum(float(optimizer.ema_momentum), fraction)


def _momentum(momentum, step, dtype):
    if isinstance(momentum, GrowingMomentum):
        t = tf.maximum(tf.cast(step, tf.float32), 1.0)
        momentum = tf.cast(tf.maximum(
            momentum.base, 1.0 - 1.0 / (momentum.window_fraction * t)), dtype)
    return tf.cast(tf.not_equal(step, 0), dtype) * momentum


def _write(offset, value, step, salt=_SALT):
    if offset.dtype == tf.bfloat16 and value.dtype == tf.float32:
        value = stochastic_rounding.to_bfloat16(
            value, tf.cast(step, tf.int64) * 2 + salt)
    offset.assign(tf.cast(value, offset.dtype))


def _read(offset, dtype):
    return tf.cast(tf.convert_to_tensor(offset), dtype)


def reanchor(offset, applied, step, momentum=None):
    """After a step that changed the weights by `applied` (their new value
    minus their old; zero where the step was refused): `d <- d -
    applied`, and with `momentum` also this step's averaging, `d <- m * (d
    - applied)` (`m` 0 at step 0)."""
    value = _read(offset, applied.dtype) - applied
    if momentum is not None:
        value = _momentum(momentum, step, value.dtype) * value
    _write(offset, value, step)


def shrink(offset, momentum, step):
    """One step's averaging of weights that did not change since the
    offset was last re-anchored: `d <- m * d`."""
    value = _read(offset, tf.float32)
    _write(offset, _momentum(momentum, step, value.dtype) * value, step,
           salt=_SALT + 1)


def update_average(average, value, momentum, step):
    """Keras's weight average (`use_ema`): `average <- m * average + (1 -
    m) * value`, with `m = momentum`, 0 at the first step (`step` 0)."""
    m = _momentum(momentum, step, average.dtype)
    average.assign(m * tf.convert_to_tensor(average)
                   + (1 - m) * tf.convert_to_tensor(value))


def update_averages(optimizer, variables, skip=()):
    """One step's averaging of each of `variables` that has an average in
    `optimizer` (Keras's `_update_model_variables_moving_average`), except
    those whose index is in `skip` (a step that averaged them already):
    `update_average`, or for a compact average `shrink`."""
    momentum, step = momentum_of(optimizer), optimizer.iterations
    compact = is_compact(optimizer)
    for index, (variable, average) in enumerate(
            zip(variables, optimizer._model_variables_moving_average)):
        if average is None or index in skip:
            continue
        if compact:
            shrink(average, momentum, step)
        else:
            update_average(average, variable, momentum, step)


def is_compact(optimizer):
    return bool(getattr(optimizer, "compact_ema", False))


def averages(optimizer, variables):
    """The optimizer's averages of `variables` (its `use_ema`), else
    None."""
    found = getattr(optimizer, "_model_variables_moving_average", None)
    if not (getattr(optimizer, "use_ema", False) and found) or len(
            found) != len(variables):
        return None
    return found


def averaged_values(optimizer, variables):
    """The averaged weights of `variables` as tensors (`w + d` where the
    average is compact), or None where the optimizer keeps no average;
    a variable without an average (None) gives its own value."""
    found = averages(optimizer, variables)
    if found is None:
        return None
    values = []
    for variable, average in zip(variables, found):
        value = tf.convert_to_tensor(variable)
        if average is not None:
            value = (value + _read(average, value.dtype)
                     if is_compact(optimizer) else
                     tf.cast(tf.convert_to_tensor(average), value.dtype))
        values.append(value)
    return values


def reset_to_weights(optimizer, variables):
    """Restarts the average at the current weights (after they were set
    from outside the optimizer's steps)."""
    for variable, average in zip(variables,
                                 averages(optimizer, variables) or ()):
        if average is not None:
            average.assign(tf.zeros_like(average) if is_compact(optimizer)
                           else tf.convert_to_tensor(variable))


def overwrite_with_average(optimizer, variables):
    """Sets `variables` to their averages and restarts each average there
    (Keras's `_overwrite_model_variables_with_average_value`, for a compact
    average)."""
    values = averaged_values(optimizer, variables)
    if values is None:
        raise ValueError(
            f"The length of model variables ({len(variables)}) to override "
            "does not match the number of averages in the optimizer; check "
            "that the optimizer was called on your model.")
    for variable, value in zip(variables, values):
        variable.assign(value)
    reset_to_weights(optimizer, variables)


def check_compact(compact_ema, steps_change_weights_alone, use_ema):
    """`compact_ema` as a bool (None, or without `use_ema`: False),
    checked: its offset follows the weights through the rule's steps, so
    Keras's generic weight decay (outside the step, the LSTM rules') cannot
    change them."""
    if compact_ema is None:
        return False
    if not isinstance(compact_ema, (bool, np.bool_)):
        raise ValueError("LearnedOptimizer `compact_ema` must be a bool; got "
                         f"{compact_ema!r}.")
    if compact_ema and not steps_change_weights_alone:
        raise ValueError(
            "compact_ema=True needs a rule that applies weight_decay in its "
            "own step (a normalized rule); this LSTM rule's weight decay is "
            "Keras's, applied outside the step. Use compact_ema=False or "
            "weight_decay=None.")
    return bool(compact_ema) and bool(use_ema)

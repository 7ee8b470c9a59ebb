"""Inner-loop learning rates: fixed (MAML), per-parameter (Meta-SGD) or
per-variable-per-step (MAML++ LSLR).

The inner loop reads a rate with `rate_for(rates, index, step)`; whether that
rate is a constant or a meta-learned variable is decided once, here, so the
inner loop itself is the same for every variant.
"""

import numbers

import keras
from keras import ops

FIXED = None
PER_PARAMETER = "per_parameter"
PER_STEP = "per_step"
LEARNABLE_RATE_KINDS = (FIXED, PER_PARAMETER, PER_STEP)


def validate_rate_kind(kind, name="learned_rates"):
    """Raises a clear error unless `kind` is a known kind of inner rate."""
    if kind not in LEARNABLE_RATE_KINDS:
        raise ValueError(
            f"`{name}` must be None (fixed rate, MAML), "
            f"'{PER_PARAMETER}' (Meta-SGD) or '{PER_STEP}' (MAML++ "
            f"per-layer-per-step rates); got {kind!r}."
        )


def rate_shape(kind, variable_shape, inner_steps):
    """Shape of the learned rate for one adapted variable."""
    if kind == PER_PARAMETER:
        return tuple(variable_shape)
    if kind == PER_STEP:
        return (inner_steps,)
    raise ValueError(f"A fixed inner rate has no variable (kind={kind!r}).")


def make_rate_variables(layer, kind, adapted_variables, inner_steps, initial):
    """Creates the meta-learned rates on `layer`, one per adapted variable.

    Args:
        layer: the layer that owns the rates (the MAML model).
        kind: one of `LEARNABLE_RATE_KINDS`.
        adapted_variables: the variables the inner loop adapts.
        inner_steps: number of inner steps in meta-training.
        initial: the initial rate (the `inner_learning_rate`).

    Returns:
        A list of `keras.Variable`, empty for a fixed rate.
    """
    if kind is FIXED:
        return []
    rates = []
    for index, variable in enumerate(adapted_variables):
        rates.append(
            layer.add_weight(
                shape=rate_shape(kind, variable.shape, inner_steps),
                initializer=keras.initializers.Constant(initial),
                dtype=variable.dtype,
                trainable=True,
                name=f"inner_rate_{index}",
            )
        )
    return rates


def rate_for(kind, rates, fixed_rate, index, step):
    """The inner learning rate for adapted variable `index` at inner `step`.

    For per-step rates, steps beyond the trained number reuse the last
    trained rate (evaluation may run more inner steps than training did).
    `step` is a Python int or a scalar integer tensor.
    """
    if kind is FIXED:
        return fixed_rate
    rate = rates[index]
    if kind == PER_STEP:
        last = rate.shape[0] - 1
        if isinstance(step, numbers.Integral):
            return rate[min(step, last)]
        return rate[ops.minimum(step, last)]
    return rate

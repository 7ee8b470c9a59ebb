"""One rule step on one Keras variable: what `LearnedOptimizer.update_step`
runs, apart from the optimizer's bookkeeping.

`step_and_assign` calls the rule, checks the step and writes the variable
and its state slots; a sparse (`tf.IndexedSlices`) gradient is summed into
rows first (`dense_gradient`), and a rule may restrict the step to the rows
it touched (`UpdateRule.table_step`).
"""

import tensorflow as tf
from keras import ops

from keras_meta import nonfinite


def table_rows(gradient, variable):
    """The number of rows of a sparse gradient's table."""
    if gradient.dense_shape is not None:
        return tf.convert_to_tensor(gradient.dense_shape)[0]
    return tf.shape(variable)[0]


def dense_gradient(gradient, variable):
    """The gradient as a dense tensor. `tf.IndexedSlices` (an `Embedding`'s
    sparse gradient) are summed into rows as `tf.convert_to_tensor` does,
    also where their indices or dense shape are Python tuples."""
    if not isinstance(gradient, tf.IndexedSlices):
        return ops.convert_to_tensor(gradient)
    return tf.math.unsorted_segment_sum(
        tf.convert_to_tensor(gradient.values),
        tf.convert_to_tensor(gradient.indices),
        table_rows(gradient, variable))


def _only_rows(row_mask, new, old, table_shape):
    """`new` on the rows where `row_mask` ([rows] bool) is true, `old`
    elsewhere; a tensor not shaped like the table (a per-tensor scalar such
    as the step count) is `new` everywhere."""
    if new.shape != table_shape:
        return new
    mask = tf.reshape(row_mask, [-1] + [1] * (new.shape.rank - 1))
    return tf.where(mask, new, old)


def step_and_assign(rule, keys, checked_keys, phi, gradient, variable,
                    slots, lr, step, row_mask=None):
    """One rule step for one variable, applied in place unless it is not
    finite: the update (scaled by `lr`) is added to `variable` and the new
    state written to `slots` (a list of variables in the order of `keys`).
    Returns the boolean "applied" scalar.

    `row_mask` ([rows] bool, or None for all rows): the rows of a table
    the step may change; the others keep their values and their state
    (the update is computed for the whole table, then masked).

    A rule whose `checks_inputs` is true promises finite results for the
    inputs its `update_checked` accepts; those are checked instead of the
    results, so that the check needs no pass over the results and the
    writes fuse into the step's own pass (under XLA)."""
    state = {key: tf.convert_to_tensor(slot) for key, slot in zip(keys, slots)}
    value = tf.convert_to_tensor(variable)
    checked = getattr(rule, "checks_inputs", False)
    if checked:
        updates, new_states, ok = rule.update_checked(
            phi, [gradient], [state], [value], step)
        ok = tf.logical_and(ok, tf.math.is_finite(lr))
    else:
        updates, new_states = rule.update(phi, [gradient], [state], [value],
                                          step)
    update, new_state = updates[0] * lr, new_states[0]
    if row_mask is not None:
        update = _only_rows(row_mask, update, tf.zeros_like(update),
                            value.shape)
        new_state = {key: _only_rows(row_mask, new, state[key], value.shape)
                     for key, new in new_state.items()}
    if "dx" in new_state:
        # The "momentum" rule measures curvature against the step
        # actually taken.
        new_state["dx"] = update
    if not checked:
        ok = nonfinite.all_finite(
            [update] + [new_state[key] for key in checked_keys])
    variable.assign_add(nonfinite.keep_if_finite(
        ok, update, tf.zeros_like(update)))
    kept = nonfinite.keep_if_finite(ok, new_state, state)
    for key, slot in zip(keys, slots):
        slot.assign(kept[key])
    return ok

"""One rule step on one Keras variable: what `LearnedOptimizer.update_step`
runs, apart from the optimizer's bookkeeping.

`step_and_assign` calls the rule, checks the step and writes the variable
and its state slots; a sparse (`tf.IndexedSlices`) gradient is summed into
rows first (`dense_gradient`), and a rule may restrict the step to the rows
it touched (`UpdateRule.table_step`). `compiled_step` compiles it with XLA,
for a large variable as two computations (`update_and_assign`, with a
compact weight average, then `state_and_assign`, with Keras's), which XLA
runs without copying the state; `plain_step` runs it without XLA.
`record_skips` is the optimizer's bookkeeping of skipped steps,
`report_skips` its warning at the end of `fit`.
"""

import functools
import warnings

import tensorflow as tf
from keras import ops
from tensorflow.python.ops import control_flow_util

from keras_meta import nonfinite
from keras_meta.optimizers import stochastic_rounding
from keras_meta.optimizers import weight_average


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


def _read(slot):
    """A slot's value; a bfloat16 slot (`UpdateRule.storage_dtypes`) is
    read as float32, which the rule computes in."""
    value = tf.convert_to_tensor(slot)
    return tf.cast(value, tf.float32) if value.dtype == tf.bfloat16 \
        else value


def _state(keys, slots):
    return {key: _read(slot) for key, slot in zip(keys, slots)}


def _rows_of_state(row_mask, new_state, state, table_shape):
    """`new_state` on `row_mask`'s rows, `state` elsewhere."""
    if row_mask is None:
        return new_state
    return {key: _only_rows(row_mask, new, state[key], table_shape)
            for key, new in new_state.items()}


def _scaled_update(update, lr, row_mask, table_shape):
    """`update * lr`, zero off `row_mask`'s rows."""
    update = update * lr
    if row_mask is None:
        return update
    return _only_rows(row_mask, update, tf.zeros_like(update), table_shape)


def _add_if_ok(variable, ok, update, offset=None, ema_momentum=None,
               step=None):
    """Adds `update` to `variable` where `ok`; a compact weight average's
    `offset` follows (`weight_average.reanchor`, with `ema_momentum` also
    averaging)."""
    before = tf.convert_to_tensor(variable) if offset is not None else None
    variable.assign_add(nonfinite.keep_if_finite(ok, update,
                                                 tf.zeros_like(update)))
    if offset is not None:
        # The change read back from the variable, not the update: a second
        # use of the update would let XLA fuse (and round) it otherwise,
        # and training would no longer take the default's steps bitwise.
        weight_average.reanchor(
            offset, tf.convert_to_tensor(variable) - before, step,
            ema_momentum)


def _write_state(keys, slots, ok, new_state, state, step):
    """Writes `new_state` into `slots` where `ok`, else keeps `state`; a
    bfloat16 slot gets its float32 value rounded stochastically, with bits
    drawn for this `step` and state key, the same for every variable (a
    kept value is bfloat16 already, so it is written back unchanged)."""
    kept = nonfinite.keep_if_finite(ok, new_state, state)
    for number, (key, slot) in enumerate(zip(keys, slots)):
        value = kept[key]
        if slot.dtype == tf.bfloat16 and value.dtype == tf.float32:
            value = stochastic_rounding.to_bfloat16(
                value, tf.cast(step, tf.int64) * len(keys) + number)
        slot.assign(value)


def step_and_assign(rule, keys, checked_keys, phi, gradient, variable,
                    slots, lr, step, row_mask=None, offset=None,
                    ema_momentum=None):
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
    state = _state(keys, slots)
    value = tf.convert_to_tensor(variable)
    checked = getattr(rule, "checks_inputs", False)
    if checked:
        updates, new_states, ok = rule.update_checked(
            phi, [gradient], [state], [value], step)
        ok = tf.logical_and(ok, tf.math.is_finite(lr))
    else:
        updates, new_states = rule.update(phi, [gradient], [state], [value],
                                          step)
    update = _scaled_update(updates[0], lr, row_mask, value.shape)
    new_state = _rows_of_state(row_mask, new_states[0], state, value.shape)
    if "dx" in new_state:
        # The "momentum" rule measures curvature against the step
        # actually taken.
        new_state["dx"] = update
    if not checked:
        ok = nonfinite.all_finite(
            [update] + [new_state[key] for key in checked_keys])
    _add_if_ok(variable, ok, update, offset, ema_momentum, step)
    _write_state(keys, slots, ok, new_state, state, step)
    return ok


def can_split(rule):
    """Whether `update_and_assign` and `state_and_assign` can take the step
    in two computations: the rule checks its inputs and computes its next
    state apart (`next_state`, which reads neither the parameters nor the
    update)."""
    return (getattr(rule, "checks_inputs", False)
            and hasattr(rule, "next_state"))


def update_and_assign(rule, keys, phi, gradient, variable, slots, lr, step,
                      row_mask=None, offset=None, ema_momentum=None):
    """The variable's half of `step_and_assign` for a rule that
    `can_split`: the checked update added to `variable` (unless the
    inputs are refused), the state left as it was. Returns the "applied"
    scalar for `state_and_assign`. A compact average's `offset` follows
    the update, as in `step_and_assign`.

    Two computations instead of one: where the state slots are both read
    by the update and written in place in one XLA computation, XLA copies
    each of them first (it fuses each output into a pass of its own, so
    the update's pass could otherwise read a slot already written); here
    the update's computation only reads them."""
    state = _state(keys, slots)
    value = tf.convert_to_tensor(variable)
    updates, _, ok = rule.update_checked(phi, [gradient], [state], [value],
                                         step)
    ok = tf.logical_and(ok, tf.math.is_finite(lr))
    _add_if_ok(variable, ok, _scaled_update(updates[0], lr, row_mask,
                                            value.shape),
               offset, ema_momentum, step)
    return ok


def state_and_assign(rule, keys, gradient, slots, ok, step, row_mask=None):
    """The state's half of `step_and_assign` (after `update_and_assign`,
    whose `ok` it takes): `rule.next_state` written to `slots` where `ok`,
    on `row_mask`'s rows."""
    state = _state(keys, slots)
    new_state = _rows_of_state(row_mask, rule.next_state(
        [gradient], [state])[0], state, gradient.shape)
    _write_state(keys, slots, ok, new_state, state, step)


# Variables at least this large take the step as two computations
# (`update_and_assign`, `state_and_assign`); below it the second
# computation's launch costs more than the copies it saves.
SPLIT_MIN_SIZE = 1 << 16


def record_skips(applied, count, step, last, consecutive):
    """Counts the skipped updates among `applied` (`(ok, variable name)`
    pairs of one step) into `count`, tracks skipped steps in a row
    (`count_skipped_step`) and, outside XLA, warns at the first."""
    oks, names = zip(*applied)
    graph = tf.compat.v1.get_default_graph()
    if not control_flow_util.GraphOrParentsInXlaContext(graph):
        warn_first_skip(oks, count, names)
    skipped = ops.sum(ops.cast(ops.logical_not(ops.stack(oks)), "int64"))
    count.assign_add(skipped)
    count_skipped_step(skipped > 0, ops.cast(step, "int64"), last,
                       consecutive)


def warn_first_skip(oks, nonfinite_count, names):
    """Prints a warning at the first skipped update (outside XLA): where
    some of `oks` (one per variable, named in `names`) is false and
    `nonfinite_count` still 0; it names the first such variable."""
    skipped = ops.logical_not(ops.stack(oks))
    first = ops.logical_and(ops.any(skipped), ops.equal(nonfinite_count, 0))
    name = tf.gather(tf.constant(names), ops.argmax(ops.cast(skipped,
                                                             "int32")))
    message = tf.strings.join([
        "WARNING: LearnedOptimizer skipped an update of variable ", name,
        " because its gradient or update was not finite (NaN or inf). "
        "Skipped steps are counted in optimizer.nonfinite_count; this "
        "message is shown once."])
    tf.cond(first, lambda: tf.print(message), lambda: tf.no_op())


def report_skips(nonfinite_count, reported):
    """Warns (`RuntimeWarning`) if `nonfinite_count` has grown past
    `reported`, the count at the last report; XLA steps cannot print, so
    `LearnedOptimizer` reports at the end of each `fit`. Returns the count
    now reported."""
    count = int(nonfinite_count.numpy())
    if count > reported:
        warnings.warn(
            f"LearnedOptimizer skipped {count - reported} variable updates "
            "since the last report because a gradient, parameter or update "
            f"was not finite (NaN or inf); {count} in all "
            "(optimizer.nonfinite_count). Those variables kept their values "
            "for those steps; keras_meta.callbacks.NonFiniteGuard stops "
            "training when skips continue.", RuntimeWarning, stacklevel=3)
    return count


def count_skipped_step(skipped, step, last, consecutive):
    """Tracks how many steps in a row skipped some variable, in the
    variables `last` (the last such step) and `consecutive` (their count),
    after step `step`, which `skipped` (a bool scalar) says whether it
    did."""
    counted = ops.where(
        ops.equal(last, step), consecutive,
        ops.where(ops.equal(last, step - 1), consecutive + 1, 1))
    consecutive.assign(ops.where(skipped, counted, consecutive))
    last.assign(ops.where(skipped, step, last))


def plain_step(rule, keys, checked_keys, compact=False):
    """`step_and_assign` for `rule` with the rule's own ops (no XLA), with
    `compiled_step`'s signature: a compact average (`compact`) given as
    `average` is re-anchored; the optimizer averages it afterwards."""

    def step_function(phi, gradient, variable, slots, lr, step,
                      row_mask=None, average=None):
        return step_and_assign(rule, keys, checked_keys, phi, gradient,
                               variable, slots, lr, step, row_mask,
                               offset=average if compact else None)

    step_function.ema_momentum, step_function.compact = None, compact
    return step_function


def compiled_step(rule, keys, checked_keys, split, ema_momentum=None,
                  compact=False):
    """`step_and_assign` for `rule` compiled with XLA: one computation, or
    with `split` (for a rule that `can_split`) `update_and_assign` then
    `state_and_assign`, which give the same results.

    The step takes the variable's weight average as `average`. Keras's
    (`weight_average.update_average`, given `ema_momentum`) is updated in
    the last computation instead of a pass of its own; a compact one
    (`compact`) is re-anchored where the update is applied, and with
    `ema_momentum` also averaged there."""
    momentum = ema_momentum if compact else None

    def then_average(step_function):
        def run(args, variable, average, step):
            ok = step_function(*args)
            if average is not None and not compact:
                weight_average.update_average(average, variable,
                                              ema_momentum, step)
            return ok
        return tf.function(run, jit_compile=True)

    if split:
        first = tf.function(functools.partial(
            update_and_assign, rule, keys, ema_momentum=momentum),
            jit_compile=True)
        last = then_average(functools.partial(state_and_assign, rule, keys))
    else:
        last = then_average(functools.partial(
            step_and_assign, rule, keys, checked_keys,
            ema_momentum=momentum))

    def step_function(phi, gradient, variable, slots, lr, step,
                      row_mask=None, average=None):
        offset = average if compact else None
        if not split:
            return last((phi, gradient, variable, slots, lr, step, row_mask,
                         offset), variable, None if compact else average,
                        step)
        ok = first(phi, gradient, variable, slots, lr, step, row_mask, offset)
        last((gradient, slots, ok, step, row_mask), variable,
             None if compact else average, step)
        return ok

    step_function.ema_momentum, step_function.compact = ema_momentum, compact
    return step_function

"""The one inner loop: a rule applied to a loss for a number of steps."""

import math

import tensorflow as tf


def unroll(rule, meta_params, values, loss_fn, steps, state=None,
           second_order=True, on_step=None, first_step=0, guard=None):
    """Runs `steps` steps of `rule` on `loss_fn`, functionally.

    Pure and traceable: nothing is assigned, so the result can be
    differentiated with respect to the initial `values` and `meta_params`
    (MAML's meta-gradient, the learned optimizer's truncated
    backpropagation).

    With `guard=f`, a step after which the loss is not finite or above
    `L0 + (f - 1) * |L0|` (`f * L0` for a non-negative loss; `L0` is the
    loss before this call's first step) is undone, and no later step is
    taken: the values (and the rule's state) stay those of the last
    accepted step. `f = inf` undoes only steps to a non-finite loss. The
    check costs one forward pass of `loss_fn` per step (at the new values,
    not differentiated); the gradients are always taken at accepted
    values, so a rejected step adds exactly zero, never NaN, to an outer
    derivative. `loss_fn` may return a vector of independent losses (one
    per task, the tasks' parameters stacked on a leading axis, as in a
    batched program): each entry is then guarded on its own, its parameter
    slices kept or undone together, and the gradient is that of their sum.

    Args:
        rule: a `keras_meta.rules.UpdateRule`.
        meta_params: the rule's meta-parameters, passed to `rule.update`.
        values: list of tensors, the initial parameters.
        loss_fn: `fn(values, step) -> tensor`, the loss minimized at
            step `step` (0-based within this call; e.g. a different
            minibatch per step): a scalar, or a vector with `guard` (above).
        steps: Python int >= 0, the number of steps.
        state: the rule's state; `rule.init(values)` when None.
        second_order: keep the dependence of the gradients on `values` for
            an outer derivative; False stops it (first-order meta-gradients).
        on_step: optional `fn(step, values)` called after each step with
            the 1-based count of steps taken and the new (with `guard`, the
            accepted) values.
        first_step: the index of the first step as the rule sees it
            (`rule.update(..., step=first_step + step)`): an int, or a
            scalar integer tensor when the loop continues a longer run in
            pieces (e.g. one compiled step at a time).
        guard: None (no check) or a float `f > 0` (above).

    Returns:
        `(values, state, losses)`: the final values and rule state, and the
        list of the `steps` losses, each evaluated before its step.
    """
    values = list(values)
    if state is None:
        state = rule.init(values)
    losses = []
    check = None
    for step in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(values)
            loss = loss_fn(values, step)
        grads = tape.gradient(loss, values, unconnected_gradients="zero")
        if not second_order:
            grads = [tf.stop_gradient(grad) for grad in grads]
        updates, new_state = rule.update(meta_params, grads, state, values,
                                         first_step + step)
        # `value + update`, written so that TensorFlow's graph optimizer
        # (which removes the double negation) runs SGD's step as the usual
        # `value - rate * grad`: hand-written SGD and this loop then agree
        # bit for bit, with and without XLA.
        new_values = [value - (-update)
                      for value, update in zip(values, updates)]
        if guard is not None:
            if check is None:
                check = _Guard(guard, loss, loss_fn)
            new_values, new_state = check.step(step + 1, values, new_values,
                                               state, new_state)
        values, state = new_values, new_state
        losses.append(loss)
        if on_step is not None:
            on_step(step + 1, values)
    return values, state, losses


class _Guard:
    """`unroll`'s per-task safeguard: which tasks still step (`active`),
    against the limit set by the loss before the first step."""

    def __init__(self, factor, first_loss, loss_fn):
        first_loss = tf.stop_gradient(first_loss)
        self.limit = None if math.isinf(factor) else (
            first_loss + (factor - 1.0) * tf.abs(first_loss))
        self.active = tf.ones_like(first_loss, dtype=tf.bool)
        self.loss_fn = loss_fn

    def step(self, step, values, new_values, state, new_state):
        """`(values, state)` after a step: the new ones where the step is
        accepted, the old ones where it is not (or the task had stopped)."""
        loss = tf.stop_gradient(self.loss_fn(
            [tf.stop_gradient(v) for v in new_values], step))
        accept = tf.logical_and(self.active, tf.math.is_finite(loss))
        if self.limit is not None:
            accept = tf.logical_and(accept, loss <= self.limit)
        self.active = accept

        def keep(new, old):
            if not tf.is_tensor(new) or new.shape.rank < accept.shape.rank:
                return new  # nothing per task to undo
            mask = accept
            if accept.shape.rank:  # one entry per task: the leading axis
                mask = tf.reshape(accept, [-1] + [1] * (new.shape.rank - 1))
            return tf.where(mask, new, old)

        values = [keep(n, o) for n, o in zip(new_values, values)]
        return values, tf.nest.map_structure(keep, new_state, state)

"""The one inner loop: a rule applied to a loss for a number of steps."""

import tensorflow as tf


def unroll(rule, meta_params, values, loss_fn, steps, state=None,
           second_order=True, on_step=None, first_step=0):
    """Runs `steps` steps of `rule` on `loss_fn`, functionally.

    Pure and traceable: nothing is assigned, so the result can be
    differentiated with respect to the initial `values` and `meta_params`
    (MAML's meta-gradient, the learned optimizer's truncated
    backpropagation).

    Args:
        rule: a `keras_meta.rules.UpdateRule`.
        meta_params: the rule's meta-parameters, passed to `rule.update`.
        values: list of tensors, the initial parameters.
        loss_fn: `fn(values, step) -> scalar tensor`, the loss minimized at
            step `step` (0-based within this call; e.g. a different
            minibatch per step).
        steps: Python int >= 0, the number of steps.
        state: the rule's state; `rule.init(values)` when None.
        second_order: keep the dependence of the gradients on `values` for
            an outer derivative; False stops it (first-order meta-gradients).
        on_step: optional `fn(step, values)` called after each step with
            the 1-based count of steps taken and the new values.
        first_step: the index of the first step as the rule sees it
            (`rule.update(..., step=first_step + step)`): an int, or a
            scalar integer tensor when the loop continues a longer run in
            pieces (e.g. one compiled step at a time).

    Returns:
        `(values, state, losses)`: the final values and rule state, and the
        list of the `steps` losses, each evaluated before its step.
    """
    values = list(values)
    if state is None:
        state = rule.init(values)
    losses = []
    for step in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(values)
            loss = loss_fn(values, step)
        grads = tape.gradient(loss, values, unconnected_gradients="zero")
        if not second_order:
            grads = [tf.stop_gradient(grad) for grad in grads]
        updates, state = rule.update(meta_params, grads, state, values,
                                     first_step + step)
        # `value + update`, written so that TensorFlow's graph optimizer
        # (which removes the double negation) runs SGD's step as the usual
        # `value - rate * grad`: hand-written SGD and this loop then agree
        # bit for bit, with and without XLA.
        values = [value - (-update) for value, update in zip(values, updates)]
        losses.append(loss)
        if on_step is not None:
            on_step(step + 1, values)
    return values, state, losses

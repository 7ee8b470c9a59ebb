"""One task: adapt on its support set, evaluate on its query set.

Every inner loop of MAML (training, evaluation, `adapt`, `task_results`,
`inner_update_norms`) runs `adapt_one_task` or, for all tasks at once on
stacked weights, `task_parallel.run_tasks_batched`; both run the inner
steps with the one inner loop, `keras_meta.rules.inner_loop.unroll`. The
wrapped model runs through `stateless_call`: nothing is assigned.
"""

import tensorflow as tf

from keras_meta.maml import batch_norm
from keras_meta.rules import inner_loop


def current_values(maml):
    """The meta-weights as tensors: `(params, rates, state)`, the wrapped
    model's trainable values, the other meta-learned values (the inner
    rule's weights, then MAML++'s per-step batch-norm weights) and the
    non-trainable values (the model's, then MAML++'s per-step batch-norm
    statistics)."""
    meta = [tf.convert_to_tensor(v) for v in maml._meta_variables()]
    count = len(maml.model.trainable_variables)
    state = [tf.convert_to_tensor(v) for v in maml._state_variables()]
    return meta[:count], meta[count:], state


def split_rates(maml, rates):
    """`rates` of `current_values` -> `(rule_params, step_weights)`: the
    inner rule's meta-parameters and the per-step batch-norm weights."""
    count = len(maml.inner_optimizer_variables)
    return list(rates[:count]), list(rates[count:])


def task_loss(maml, y_true, y_pred, extra_losses, weights=None):
    """The mean per-example loss plus the model's own losses; with
    `weights` [n] (a 0/1 mask of real rows), the weighted mean over
    examples, so zero-weight rows contribute nothing (value or gradient)."""
    losses = maml._loss_fn(y_true, y_pred)
    if weights is None:
        loss = tf.reduce_mean(losses)
    else:
        per_example = tf.reduce_mean(
            tf.reshape(losses, [tf.shape(weights)[0], -1]), axis=1)
        weights = tf.cast(weights, per_example.dtype)
        loss = tf.reduce_sum(per_example * weights) / tf.reduce_sum(weights)
    if extra_losses:
        loss = loss + tf.add_n(extra_losses)
    return loss


def forward(maml, params, non_trainable, x, training, step_weights=(),
            index=0):
    """`(predictions, new_non_trainable, losses)` of the wrapped model at
    `params`, with exact second derivatives through batch statistics.

    With MAML++'s per-step batch norm, the pass at inner step `index` uses
    that step's batch-norm weights (from `step_weights`) and statistics
    (the tail of `non_trainable`), and its new statistics replace that
    step's (`batch_norm.StepBatchNorm`).
    """
    plan = maml._step_batch_norm
    state = non_trainable
    if plan is not None:
        params, state = plan.values_at(params, non_trainable, step_weights,
                                       index)
    with batch_norm.exact_moments():
        pred, new_state, losses = maml.model.stateless_call(
            params, state, x, training=training, return_losses=True)
    if plan is not None:
        new_state = plan.state_after_pass(non_trainable, new_state, index)
    return pred, new_state, losses


def merge_adapted(indices, base, adapted):
    """`base` with the entries at `indices` replaced by `adapted`."""
    merged = list(base)
    for i, value in zip(indices, adapted):
        merged[i] = value
    return merged


def start_params(maml, params, non_trainable, support_x, support_y,
                 training, support_weights=None):
    """The weights a task's inner loop starts from: `params` itself, or
    for `ProtoMAML` `params` with the head set from the support set's
    prototypes (`proto_maml.PrototypeStart`)."""
    if maml._start is None:
        return params
    return maml._start(params, non_trainable, support_x, support_y, training,
                       support_weights)


def adapt_one_task(maml, params, rates, non_trainable, support_x, support_y,
                   steps, training, second_order, on_step=None,
                   support_weights=None):
    """`adapt_from` the task's `start_params` (the arguments are
    `adapt_from`'s)."""
    start = start_params(maml, params, non_trainable, support_x, support_y,
                         training, support_weights)
    return adapt_from(maml, start, rates, non_trainable, support_x,
                      support_y, steps, training, second_order, on_step,
                      support_weights)


def adapt_from(maml, params, rates, non_trainable, support_x, support_y,
               steps, training, second_order, on_step=None,
               support_weights=None):
    """Runs `steps` inner steps of the inner rule on one task's support.

    Args:
        maml: the `MAML` model (its wrapped model, loss, inner rule and
            adapted variables).
        params: list of tensors, the model's trainable values the task
            starts from (`start_params`).
        rates: list of tensors, the values of the inner rule's weights
            (`inner_optimizer_variables`; may be empty).
        non_trainable: list of tensors, the model's non-trainable values.
        support_x, support_y: one task's support set (no task axis).
        steps: Python int, the number of inner steps.
        training: the `training` flag of the forward passes.
        second_order: keep the second-order term of the meta-gradient.
        on_step: optional `fn(step, fast_params)` called after each step.
        support_weights: optional [n] weights of the support examples in
            the loss (`task_loss`; padded rows weigh 0).

    Returns:
        The adapted ("fast") parameter list; with MAML++'s per-step batch
        norm weights, those of the pass after `steps` steps. With
        `maml.inner_guard`, a step that raises the support loss too far is
        undone and the task stops there (`inner_loop.unroll`'s `guard`).
    """
    indices = maml._adapted_indices
    rule_params, step_weights = split_rates(maml, rates)

    def support_loss(adapted, step):
        pred, _, losses = forward(
            maml, merge_adapted(indices, params, adapted), non_trainable,
            support_x, training, step_weights, step)
        return task_loss(maml, support_y, pred, losses, support_weights)

    report = None
    if on_step is not None:
        def report(step, adapted):
            on_step(step, merge_adapted(indices, params, adapted))

    adapted, _, _ = inner_loop.unroll(
        maml.inner_optimizer, rule_params, [params[i] for i in indices],
        support_loss, steps, second_order=second_order, on_step=report,
        guard=maml.inner_guard)
    fast = merge_adapted(indices, params, adapted)
    if maml._step_batch_norm is not None:
        fast = maml._step_batch_norm.weights_after(fast, step_weights, steps)
    return fast


def run_task(maml, params, rates, non_trainable, task, steps, training,
             second_order, record_steps, pre_adaptation=True):
    """Adapts on one task and evaluates the query set.

    Returns a dict: `losses` [len(record_steps)] query losses after each
    recorded number of steps; `pre_pred`/`post_pred` query predictions
    before and after adaptation; `non_trainable` the state after the last
    query pass. With `pre_adaptation=False` the query pass at the
    task's `start_params` is skipped: no `pre_pred`, and the step-0 loss is 0.
    With MAML++'s per-step statistics each query pass starts from the
    state the previous one left, so that every recorded step's statistics
    are updated.
    """
    results = {}
    _, step_weights = split_rates(maml, rates)
    plan = maml._step_batch_norm
    chained = plan is not None and plan.statistics
    state = [non_trainable]

    def query(step, fast):
        pred, new_state, losses = forward(
            maml, fast, state[0], task["query_x"], training, step_weights,
            max(step - 1, 0))
        if chained:
            state[0] = new_state
        results[step] = (task_loss(maml, task["query_y"], pred, losses),
                         pred, new_state)

    def on_step(step, fast):
        if step in record_steps and step != steps:
            query(step, fast)

    start = start_params(maml, params, non_trainable, task["support_x"],
                         task["support_y"], training)
    if pre_adaptation:
        query(0, start)
    fast = adapt_from(
        maml, start, rates, non_trainable, task["support_x"],
        task["support_y"], steps, training, second_order, on_step)
    query(steps, fast)
    if not pre_adaptation:
        results[0] = (tf.zeros_like(results[steps][0]), None, None)
    outputs = {
        "losses": tf.stack([results[s][0] for s in record_steps]),
        "post_pred": results[steps][1],
        "non_trainable": list(results[steps][2]),
    }
    if pre_adaptation:
        outputs["pre_pred"] = results[0][1]
    return outputs

"""The meta-loss and its gradients, in two forms.

- `over_map`: one `tf.GradientTape` around the map over tasks (the
  "vectorized" and "batched" task parallelism).
- `per_task`: each task differentiated inside the loop over tasks
  ("sequential"). The meta-loss is a mean over tasks, so its gradient is
  the sum of each task's own gradient, taken inside the loop body and
  summed in the loop's carry. Differentiating the loop from outside
  instead makes TensorFlow build the gradient of a `while_loop` whose body
  is the whole inner loop (`_WhileGrad`, most of the step's compile time)
  and keep every intermediate in per-iteration accumulators.

Both return `(meta_loss, grads, outputs, record_steps)`: `grads` lines up
with the wrapped model's trainable variables followed by the inner rule's
weights; `outputs` are the stacked per-task outputs of `tasks.run_task`.
"""

import tensorflow as tf

from keras_meta.maml import multi_step_loss
from keras_meta.maml import task_parallel
from keras_meta.maml import tasks as task_lib


def compute(maml, episode, second_order=None):
    """Meta-loss and meta-gradients of `maml` for one batch of episodes.

    Gradients are summed over replicas under a strategy, so each replica's
    share of the mean is divided by their number.

    Args:
        maml: the `MAML` model.
        episode: an episode dict with a task axis.
        second_order: keep second derivatives: a Python bool, or a scalar
            bool tensor that picks one of the two computations in a
            `tf.cond` (MAML++'s derivative-order annealing). None: unless
            `maml.first_order`.
    """
    if second_order is None:
        second_order = not maml.first_order
    plan = maml._step_batch_norm
    # Per-step statistics come from the query pass after every step.
    every = maml.multi_step_loss or (plan is not None and plan.statistics)
    record = range(maml.inner_steps + 1) if every else ()
    if isinstance(second_order, bool):
        return _compute(maml, episode, record, second_order)
    meta_loss, grads, outputs = tf.cond(
        second_order,
        lambda: _compute(maml, episode, record, True)[:3],
        lambda: _compute(maml, episode, record, False)[:3])
    return meta_loss, grads, outputs, sorted(set(record) | {
        0, maml.inner_steps})


def _compute(maml, episode, record, second_order):
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if task_parallel.choose(maml) == "sequential":
        return per_task(maml, episode, record, 1.0 / replicas, second_order)
    return over_map(maml, episode, record, replicas, second_order)


def over_map(maml, episode, record, replicas, second_order):
    """Meta-gradients through the whole map over tasks, with one tape."""
    with tf.GradientTape() as tape:
        params, rates, outputs, record_steps = task_parallel.run_episode(
            maml, episode, maml.inner_steps, training=True,
            second_order=second_order, record_steps=record,
            pre_adaptation=False)  # the logging pass, if at all, runs apart
        meta_loss = multi_step_loss.meta_loss(maml, outputs["losses"])
        scaled_loss = meta_loss / replicas
    grads = tape.gradient(scaled_loss, params + rates,
                          unconnected_gradients="zero")
    return meta_loss, grads, outputs, record_steps


def per_task(maml, episode, record, loss_scale, second_order):
    """Meta-gradients summed over tasks, each task differentiated inside
    the loop over tasks."""
    steps = maml.inner_steps
    record_steps = sorted(set(record) | {0, steps})
    params, rates, state = task_lib.current_values(maml)
    signature = task_parallel.task_output_signature(
        maml, episode, record_steps, False)
    count = tf.shape(episode["query_x"])[0]
    arrays = tf.nest.map_structure(
        lambda spec: tf.TensorArray(spec.dtype, size=count,
                                    element_shape=spec.shape),
        signature)
    weights = params + rates
    sums = [tf.zeros_like(w) for w in weights]
    scale = loss_scale / tf.cast(count, params[0].dtype)

    def body(i, arrays, sums, loss_sum):
        task = tf.nest.map_structure(lambda t: t[i], episode)
        # Fresh tensors inside the body, so the tape sees their uses.
        local = [tf.identity(w) for w in weights]
        with tf.GradientTape() as tape:
            tape.watch(local)
            outputs = task_lib.run_task(
                maml, local[:len(params)], local[len(params):], state, task,
                steps, True, second_order, record_steps, False)
            task_loss = multi_step_loss.meta_loss(maml, outputs["losses"][None])
            scaled_loss = task_loss * scale
        grads = tape.gradient(scaled_loss, local,
                              unconnected_gradients="zero")
        arrays = tf.nest.map_structure(
            lambda array, value: array.write(i, value), arrays, outputs)
        sums = [s + g for s, g in zip(sums, grads)]
        return i + 1, arrays, sums, loss_sum + task_loss

    _, arrays, grads, loss_sum = tf.while_loop(
        lambda i, *_: i < count, body,
        (tf.constant(0), arrays, sums, tf.zeros([], params[0].dtype)))
    outputs = tf.nest.map_structure(lambda array: array.stack(), arrays)
    meta_loss = loss_sum / tf.cast(count, loss_sum.dtype)
    return meta_loss, grads, outputs, record_steps

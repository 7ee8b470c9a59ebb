"""How the tasks of a meta-batch run: the automatic choice and the maps.

- "batched": all tasks' weights stacked on a leading axis and every layer
  run once for all tasks (`batched_dense`; a Sequential of plain Dense
  layers and a built-in SGD rule).
- "vectorized": `tf.vectorized_map` over tasks.
- "sequential": a `tf.while_loop` over tasks (`tf.map_fn`), one compiled
  loop body; in training each task's meta-gradient is taken inside the
  body (`meta_gradients.per_task`).

`choose` picks one for "auto": "batched" under XLA where it applies, else
"sequential" under XLA (XLA compiles `vectorized_map` slowly), for
convolutional models (where `vectorized_map` runs slower than the loop)
and under TPUStrategy; "vectorized" otherwise.
"""

import keras
import tensorflow as tf
from keras.src.layers.convolutional.base_conv import BaseConv

from keras_meta import backend as km_backend
from keras_meta.maml import batched_dense
from keras_meta.maml import tasks as task_lib
from keras_meta.maml.inner_rules import sgd as inner_sgd
from keras_meta.rules import inner_loop

TASK_PARALLELISM = ("auto", "batched", "vectorized", "sequential")


def batchable(maml):
    """True if all tasks can run as one batched program (see
    `batched_dense`): a plain Dense stack and a built-in SGD rule, every
    task starting from the meta-weights (not `ProtoMAML`)."""
    return (maml._dense_plan is not None and maml._start is None
            and isinstance(maml.inner_optimizer, inner_sgd.InnerSGD))


def auto_jit_compile(maml):
    """`jit_compile="auto"`: XLA on GPU and TPU; on CPU only for the
    batched Dense path, the one formulation XLA made faster there."""
    strategy = getattr(maml, "_distribute_strategy", None)
    if km_backend.default_jit_compile(strategy=strategy):
        return True
    return (batchable(maml) and strategy is None
            and not tf.distribute.has_strategy())


def choose(maml):
    """The task parallelism `maml` runs with (its `task_parallelism`, or
    the automatic choice for "auto")."""
    if maml.task_parallelism != "auto":
        return maml.task_parallelism
    if maml.jit_compile and batchable(maml):
        return "batched"
    if maml.jit_compile or any(
            isinstance(layer, BaseConv)
            for layer in maml.model._flatten_layers()):
        return "sequential"
    if isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy):
        return "sequential"  # XLA compiles the step; see above
    return "vectorized"


def task_output_signature(maml, episode, record_steps, pre_adaptation):
    """The `TensorSpec`s of one task's `tasks.run_task` outputs."""
    query_x = episode["query_x"]
    pred_spec = maml.model.compute_output_spec(
        keras.KerasTensor(query_x.shape[1:], query_x.dtype))
    signature = {
        "losses": tf.TensorSpec([len(record_steps)], pred_spec.dtype),
        "post_pred": tf.TensorSpec(pred_spec.shape, pred_spec.dtype),
        "non_trainable": [
            tf.TensorSpec(v.shape, v.dtype)
            for v in maml._state_variables()],
    }
    if pre_adaptation:
        signature["pre_pred"] = signature["post_pred"]
    return signature


def map_tasks(maml, fn, episode, record_steps, pre_adaptation=True):
    """`fn` (one task's `run_task`) over the episode's tasks, stacked."""
    if choose(maml) == "vectorized":
        return tf.vectorized_map(fn, episode)
    signature = task_output_signature(maml, episode, record_steps,
                                      pre_adaptation)
    return tf.map_fn(fn, episode, fn_output_signature=signature)


def run_tasks_batched(maml, params, rates, episode, steps, second_order,
                      record_steps, pre_adaptation):
    """`tasks.run_task` for all tasks at once on stacked weights (see
    `batched_dense`); the same outputs, with the task axis first."""
    count = tf.shape(episode["support_x"])[0]
    indices = maml._adapted_indices
    adapted_set = set(indices)
    # Adapted weights get a task axis; the gradient of the sum of the task
    # losses with respect to them is every task's own gradient.
    fast = [tf.broadcast_to(p, tf.concat([[count], tf.shape(p)], 0))
            if i in adapted_set else p for i, p in enumerate(params)]

    def task_losses(weights, x, y):
        pred = batched_dense.forward(maml._dense_plan, weights, x)
        return tf.reduce_mean(maml._loss_fn(y, pred), axis=1), pred

    def query(weights):
        return task_losses(weights, episode["query_x"], episode["query_y"])

    results = {}
    if pre_adaptation:
        results[0] = query(params)

    def support_loss(adapted, step):
        del step
        losses, _ = task_losses(
            task_lib.merge_adapted(indices, fast, adapted),
            episode["support_x"], episode["support_y"])
        # Guarded: each task's loss, so that each is guarded on its own.
        return (losses if maml.inner_guard is not None
                else tf.reduce_sum(losses))

    def on_step(step, adapted):
        if step in record_steps and step != steps:
            results[step] = query(task_lib.merge_adapted(indices, fast,
                                                         adapted))

    adapted, _, _ = inner_loop.unroll(
        maml.inner_optimizer, rates, [fast[i] for i in indices],
        support_loss, steps, second_order=second_order, on_step=on_step,
        guard=maml.inner_guard)
    results[steps] = query(task_lib.merge_adapted(indices, fast, adapted))
    if not pre_adaptation:
        results[0] = (tf.zeros_like(results[steps][0]), None)
    outputs = {
        "losses": tf.stack([results[s][0] for s in record_steps], axis=1),
        "post_pred": results[steps][1],
        "non_trainable": [],
    }
    if pre_adaptation:
        outputs["pre_pred"] = results[0][1]
    return outputs


def run_episode(maml, episode, steps, training, second_order, record_steps,
                pre_adaptation=True):
    """Adapts on every task of `episode` and evaluates the query sets.

    Returns `(params, rates, outputs, record_steps)`: the meta-weights as
    the tensors the outputs were computed from (to differentiate with
    respect to), the stacked outputs of `tasks.run_task`, and the recorded
    step counts (always with 0 and `steps`).
    """
    params, rates, state = task_lib.current_values(maml)
    record_steps = sorted(set(record_steps) | {0, steps})
    if choose(maml) == "batched":
        outputs = run_tasks_batched(maml, params, rates, episode, steps,
                                    second_order, record_steps,
                                    pre_adaptation)
    else:
        outputs = map_tasks(
            maml,
            lambda task: task_lib.run_task(
                maml, params, rates, state, task, steps, training,
                second_order, record_steps, pre_adaptation),
            episode, record_steps, pre_adaptation)
    return params, rates, outputs, record_steps


def pre_adaptation_pass(maml, episode):
    """Each task's query loss and predictions at its start weights (the
    meta-weights, or `ProtoMAML`'s prototype head; the training-mode
    forward pass, before adaptation; nothing is differentiated). Returns
    `(losses [tasks], predictions)`."""
    params, rates, state = task_lib.current_values(maml)
    _, step_weights = task_lib.split_rates(maml, rates)
    keys = ("query_x", "query_y") + (
        () if maml._start is None else ("support_x", "support_y"))
    query = {k: episode[k] for k in keys}
    mode = choose(maml)
    if mode == "batched":
        pred = batched_dense.forward(maml._dense_plan, params,
                                     query["query_x"])
        losses = maml._loss_fn(query["query_y"], pred)
        return tf.reduce_mean(losses, axis=1), pred

    def one_task(task):
        start = params if maml._start is None else task_lib.start_params(
            maml, params, state, task["support_x"], task["support_y"], True)
        pred, _, extra = task_lib.forward(maml, start, state,
                                          task["query_x"], True, step_weights)
        return task_lib.task_loss(maml, task["query_y"], pred, extra), pred

    if mode == "vectorized":
        return tf.vectorized_map(one_task, query)
    pred_spec = task_output_signature(maml, episode, (0,), False)[
        "post_pred"]
    return tf.map_fn(one_task, query, fn_output_signature=(
        tf.TensorSpec([], pred_spec.dtype), pred_spec))

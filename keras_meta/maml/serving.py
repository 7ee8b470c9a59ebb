"""Serving few-shot adaptation: adapt and predict in one compiled call.

`MAML.adapt_and_predict` runs the inner loop on one task's support set and
the query forward pass at the adapted weights in one `tf.function`
(compiled with XLA where the model's `jit_compile` says so), traced once
per input shape and never cloning the model: the fast weights stay tensors
(`tasks.adapt_one_task`, the one inner loop). `MAML.adapt_and_predict_batch`
does it for many tasks of possibly different sizes in one call: each
task's support set is padded to the largest and the padded rows get weight
0 in the support loss (`tasks.task_loss`), so every task adapts exactly as
alone. `keras_meta.maml.export` writes the same functions to a SavedModel.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_meta.maml import batched_dense
from keras_meta.maml import checks
from keras_meta.maml import task_parallel
from keras_meta.maml import tasks as task_lib
from keras_meta.rules import inner_loop


def couples_examples(maml):
    """True if a forward pass mixes the examples of a batch (batch
    normalization with batch statistics, `transductive=True`): padding
    would then change the real rows' results."""
    return maml.transductive and any(
        isinstance(layer, keras.layers.BatchNormalization)
        for layer in maml.model._flatten_layers())


def adapt_and_predict_fn(maml, steps):
    """`(support_x, support_y, query_x) -> query predictions` after `steps`
    inner steps from the current meta-weights (not compiled)."""

    def run(support_x, support_y, query_x):
        params, rates, state = task_lib.current_values(maml)
        fast = task_lib.adapt_one_task(
            maml, params, rates, state, support_x, support_y, steps,
            training=maml.transductive, second_order=False)
        pred, _, _ = task_lib.forward(maml, fast, state, query_x,
                                      maml.transductive)
        return pred

    return run


def adapt_and_predict_batch_fn(maml, steps):
    """`(support_x, support_y, support_mask, query_x) -> predictions`, all
    with a task axis; `support_mask` [tasks, n] is 1 on real rows and 0 on
    padding (not compiled). Tasks run as training runs them
    (`task_parallel.choose`): one batched program for a Dense stack under
    XLA, else a map of `tasks.adapt_one_task` over tasks."""
    coupled = couples_examples(maml)

    def run(support_x, support_y, support_mask, query_x):
        params, rates, state = task_lib.current_values(maml)
        if coupled:  # padding would change the batch statistics
            tf.debugging.assert_equal(
                support_mask, tf.ones_like(support_mask), message=(
                    "this model normalizes with batch statistics "
                    "(transductive batch norm): every task's support set "
                    "must be unpadded (support_mask all ones)"))
        mode = task_parallel.choose(maml)
        if mode == "batched":
            return batched_dense_predictions(
                maml, params, rates, support_x, support_y, support_mask,
                query_x, steps)

        def one_task(task):
            fast = task_lib.adapt_one_task(
                maml, params, rates, state, task["support_x"],
                task["support_y"], steps, training=maml.transductive,
                second_order=False, support_weights=task["support_mask"])
            pred, _, _ = task_lib.forward(maml, fast, state, task["query_x"],
                                          maml.transductive)
            return pred

        tasks = {"support_x": support_x, "support_y": support_y,
                 "support_mask": support_mask, "query_x": query_x}
        if mode == "vectorized":
            return tf.vectorized_map(one_task, tasks)
        spec = maml.model.compute_output_spec(keras.KerasTensor(
            query_x.shape[1:], query_x.dtype.name))
        return tf.map_fn(one_task, tasks, fn_output_signature=tf.TensorSpec(
            spec.shape, spec.dtype))

    return run


def batched_dense_predictions(maml, params, rates, support_x, support_y,
                              support_mask, query_x, steps):
    """All tasks at once on stacked weights (`batched_dense`, as
    `task_parallel.run_tasks_batched` trains): the adapted weights get a
    task axis, and the support loss is the sum over tasks of each task's
    mean over its real rows, whose gradient is each task's own."""
    count = tf.shape(support_x)[0]
    indices = maml._adapted_indices
    adapted_set = set(indices)
    fast = [tf.broadcast_to(p, tf.concat([[count], tf.shape(p)], 0))
            if i in adapted_set else p for i, p in enumerate(params)]
    weights = tf.cast(support_mask, fast[0].dtype)

    def support_loss(adapted, step):
        del step
        pred = batched_dense.forward(
            maml._dense_plan, task_lib.merge_adapted(indices, fast, adapted),
            support_x)
        losses = maml._loss_fn(support_y, pred)
        losses = tf.reduce_mean(tf.reshape(
            losses, tf.concat([tf.shape(weights), [-1]], 0)), axis=2)
        losses = (tf.reduce_sum(losses * weights, axis=1)
                  / tf.reduce_sum(weights, axis=1))
        # Guarded: each task's loss, so that each is guarded on its own.
        return (losses if maml.inner_guard is not None
                else tf.reduce_sum(losses))

    adapted, _, _ = inner_loop.unroll(
        maml.inner_optimizer, rates, [fast[i] for i in indices],
        support_loss, steps, second_order=False, guard=maml.inner_guard)
    return batched_dense.forward(
        maml._dense_plan, task_lib.merge_adapted(indices, fast, adapted),
        query_x)


def pad_tasks(arrays):
    """Stacks per-task arrays of different lengths into [tasks, max, ...],
    padding each with copies of its last row (finite values, so a zero
    weight zeroes their gradient too). Returns `(stacked, lengths)`."""
    lengths = [int(a.shape[0]) for a in arrays]
    longest = max(lengths)
    padded = [a if n == longest else np.concatenate(
        [a, np.repeat(a[-1:], longest - n, axis=0)])
        for a, n in zip(arrays, lengths)]
    return np.stack(padded), lengths


def check_query(support_x, query_x):
    """Raises unless `query_x` (a numpy array) holds finite examples shaped
    (and typed) like the support set's."""
    if (query_x.ndim != support_x.ndim or query_x.dtype != support_x.dtype
            or query_x.shape[1:] != support_x.shape[1:]):
        raise ValueError(
            "query_x must hold examples of the support set's shape and "
            f"dtype, [q, {', '.join(map(str, support_x.shape[1:]))}] "
            f"{support_x.dtype.name}; got shape {tuple(query_x.shape)} "
            f"{query_x.dtype.name}.")
    checks.check_finite({"query_x": query_x}, ["query_x"],
                        "adapt_and_predict() query set")


def check_task_sizes(sx, sy, qx):
    """Raises unless the per-task lists agree: as many tasks, each with
    support examples matching its targets, and at least one support and
    one query example."""
    if not len(sx) == len(sy) == len(qx):
        raise ValueError(
            "adapt_and_predict_batch: support_x, support_y and query_x "
            f"must hold the same number of tasks; got {len(sx)}, "
            f"{len(sy)} and {len(qx)}.")
    for i, (x, y, q) in enumerate(zip(sx, sy, qx)):
        if x.ndim == 0 or y.ndim == 0 or len(x) != len(y) or not (
                len(x) and q.ndim and len(q)):
            raise ValueError(
                f"adapt_and_predict_batch: task {i} has support_x of shape "
                f"{x.shape}, support_y of shape {y.shape} and query_x of "
                f"shape {q.shape}; each task needs n >= 1 support examples "
                "with n targets and at least one query example.")


def _as_task_list(value, name):
    """A list of per-task numpy arrays from a list or an array with a task
    axis."""
    if isinstance(value, (list, tuple)):
        arrays = [np.asarray(v) for v in value]
    else:
        arrays = list(np.asarray(value))
    if not arrays:
        raise ValueError(f"adapt_and_predict_batch: `{name}` holds no task.")
    return arrays


class Serving:
    """Mixin of `MAML` (beside `Adaptation`, whose function cache it uses):
    compiled adapt-and-predict, for one task or many."""

    def adapt_and_predict(self, support_x, support_y, query_x, steps=None):
        """Adapts to one task and predicts its query inputs, in one call.

        The same numbers as `adapt(support_x, support_y, steps)` followed by
        calling the adapted model on `query_x` with
        `training=self.transductive` (for a model without batch
        normalization or dropout, the same as its `predict`), without
        building a model: the inner loop and the query pass run in one
        `tf.function`, traced once per input shape (XLA-compiled when
        `jit_compile` is on) and cached per number of steps. The
        meta-weights are read at each call, so further training is seen.

        Example:

        ```python
        pred = maml.adapt_and_predict(support_x, support_y, query_x)
        ```

        Args:
            support_x: one task's support inputs, [n, *input_shape] (no
                task axis).
            support_y: its targets, [n, *target_shape].
            query_x: the inputs to predict, [q, *input_shape].
            steps: inner steps; defaults to `eval_inner_steps`.

        Returns:
            The query predictions, a tensor [q, *output_shape].

        Raises:
            ValueError: the support set fails `adapt()`'s checks, or
                `query_x` does not fit the model or holds NaN or inf.
        """
        checks.require_compiled(self, "adapt_and_predict")
        steps = self._eval_steps(steps)
        # The checks run on numpy arrays (several times faster than on
        # eager tensors); the function gets tensors.
        arrays = [np.asarray(v) for v in (support_x, support_y, query_x)]
        checks.check_support(self.model, arrays[0], arrays[1],
                             self._loss_kind)
        check_query(arrays[0], arrays[2])
        return self.adapt_and_predict_function(steps)(
            *[tf.convert_to_tensor(v) for v in arrays])

    def adapt_and_predict_function(self, steps=None):
        """The cached `tf.function` behind `adapt_and_predict` (no input
        checks): `fn(support_x, support_y, query_x) -> predictions`."""
        steps = self._eval_steps(steps)
        return self._compiled(("adapt_and_predict", steps), lambda: (
            tf.function(adapt_and_predict_fn(self, steps),
                        jit_compile=bool(self.jit_compile),
                        reduce_retracing=True)))

    def adapt_and_predict_batch(self, support_x, support_y, query_x,
                                steps=None):
        """Adapts to many tasks at once and predicts their query inputs.

        Each task adapts exactly as `adapt_and_predict` would adapt it
        alone (to float tolerance): support sets of different sizes are
        padded to the largest, and the padded rows weigh 0 in the support
        loss (the loss is the mean over each task's real rows, so values
        and gradients are the unpadded ones). For a model with batch
        statistics (batch normalization with `transductive=True`), padding
        would change them, so tasks are grouped by size instead and each
        group runs unpadded.

        Example:

        ```python
        preds = maml.adapt_and_predict_batch(
            [sx_1, sx_2], [sy_1, sy_2], [qx_1, qx_2])  # 5 and 10 shots
        ```

        Args:
            support_x: a list of per-task support inputs [n_i, ...], or an
                array [tasks, n, ...].
            support_y: the matching targets (list or array).
            query_x: a list of per-task query inputs [q_i, ...], or an
                array [tasks, q, ...].
            steps: inner steps; defaults to `eval_inner_steps`.

        Returns:
            Numpy arrays, as `predict` gives: a list of per-task
            predictions [q_i, ...] when `query_x` is a list, else one
            array [tasks, q, ...].

        Raises:
            ValueError: the tasks do not fit the model and the loss (the
                checks of `predict`), or the lists differ in length.
        """
        checks.require_compiled(self, "adapt_and_predict_batch")
        steps = self._eval_steps(steps)
        ragged = isinstance(query_x, (list, tuple))
        sx, sy, qx = (_as_task_list(v, n) for v, n in (
            (support_x, "support_x"), (support_y, "support_y"),
            (query_x, "query_x")))
        check_task_sizes(sx, sy, qx)
        if couples_examples(self):
            groups = {}
            for i, (s, q) in enumerate(zip(sx, qx)):
                groups.setdefault((len(s), len(q)), []).append(i)
            groups = list(groups.values())
        else:
            groups = [list(range(len(sx)))]
        preds = [None] * len(sx)
        for group in groups:
            for i, pred in zip(group, self._run_padded(
                    [sx[i] for i in group], [sy[i] for i in group],
                    [qx[i] for i in group], steps)):
                preds[i] = pred
        return preds if ragged else np.stack(preds)

    def _run_padded(self, sx, sy, qx, steps):
        """Pads, checks and runs one group of tasks; per-task predictions
        (padding removed)."""
        support_x, lengths = pad_tasks(sx)
        support_y, _ = pad_tasks(sy)
        query_x, query_lengths = pad_tasks(qx)
        mask = (np.arange(support_x.shape[1])[None, :]
                < np.asarray(lengths)[:, None]).astype(
                    keras.backend.floatx())
        checks.check_episode(
            {"support_x": support_x, "support_y": support_y,
             "query_x": query_x,  # targets of the query's shape:
             "query_y": np.repeat(support_y[:, :1], query_x.shape[1], 1)},
            self.model,
            self._loss_kind, "adapt_and_predict_batch tasks",
            finite_keys=("support_x", "support_y", "query_x"))
        fn = self._compiled(
            ("adapt_and_predict_batch", steps), lambda: tf.function(
                adapt_and_predict_batch_fn(self, steps),
                jit_compile=bool(self.jit_compile), reduce_retracing=True))
        preds = fn(support_x, support_y, mask, query_x).numpy()
        return [preds[i, :n] for i, n in enumerate(query_lengths)]

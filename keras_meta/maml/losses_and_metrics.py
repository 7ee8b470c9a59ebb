"""MAML's loss and query metrics: resolution, updates and logs.

The loss is resolved to a per-example function so that the inner loop can
average over one task's examples without the replica scaling that
`keras.losses.Loss.__call__` applies. Metrics are computed on the query
sets before (`pre_adapt_<name>`) and after (`post_adapt_<name>`)
adaptation; evaluation also logs the query loss after each inner step.
"""

import keras
import tensorflow as tf

from keras_meta import distribute as km_distribute
from keras_meta.maml import task_parallel


def resolve_loss(loss):
    """Returns `(per_example_fn, name)` for a Keras loss identifier."""
    if loss is None:
        raise ValueError(
            "MAML.compile needs a `loss` (e.g. 'mse' for regression or "
            "keras.losses.SparseCategoricalCrossentropy(from_logits=True) "
            "for classification); got None.")
    loss_obj = keras.losses.get(loss)
    if isinstance(loss_obj, keras.losses.Loss):
        return loss_obj.call, loss_obj.name
    if callable(loss_obj):
        return loss_obj, getattr(loss_obj, "__name__", "loss")
    raise ValueError(f"Unknown loss {loss!r}.")


def accuracy_for(loss_name):
    """The accuracy metric class that matches a classification loss."""
    name = loss_name.lower()
    if "sparse" in name:
        return keras.metrics.SparseCategoricalAccuracy
    if "binary" in name:
        return keras.metrics.BinaryAccuracy
    if "categorical" in name:
        return keras.metrics.CategoricalAccuracy
    raise ValueError(
        f"'accuracy' needs a classification loss to pick the accuracy "
        f"metric; the compiled loss is {loss_name!r}. Pass a metric "
        "object such as keras.metrics.SparseCategoricalAccuracy().")


def resolve_metric(metric, loss_name, prefix):
    """A fresh metric object named `prefix + name`."""
    if isinstance(metric, str) and metric in ("accuracy", "acc"):
        return accuracy_for(loss_name)(name=prefix + "accuracy")
    if isinstance(metric, keras.metrics.Metric):
        config = metric.get_config()
        config["name"] = prefix + metric.name
        return metric.__class__.from_config(config)
    fn = keras.metrics.get(metric)
    if isinstance(fn, keras.metrics.Metric):
        return resolve_metric(fn, loss_name, prefix)
    name = metric if isinstance(metric, str) else fn.__name__
    return keras.metrics.MeanMetricWrapper(fn, name=prefix + name)


def flat_tasks(t):
    """[tasks, examples, ...] -> [tasks * examples, ...]."""
    return tf.reshape(t, [-1] + list(t.shape[2:]))


class QueryMetrics:
    """Mixin of `MAML`: the loss trackers and query metrics, their updates
    and the step logs."""

    def _build_metrics(self, loss_name, metrics, eval_steps):
        self._pre_metrics = [
            resolve_metric(m, loss_name, "pre_adapt_") for m in metrics]
        self._post_metrics = [
            resolve_metric(m, loss_name, "post_adapt_") for m in metrics]
        self._meta_loss_tracker = keras.metrics.Mean(name="loss")
        self._pre_loss_tracker = keras.metrics.Mean(name="pre_adapt_loss")
        self._post_loss_tracker = keras.metrics.Mean(name="post_adapt_loss")
        self._step_loss_trackers = [
            keras.metrics.Mean(name=f"query_loss_after_step_{k}")
            for k in range(1, eval_steps + 1)]

    def _check_step_trackers(self, steps):
        """Raises unless `compile` made one loss metric per step of an
        evaluation with `steps` inner steps."""
        if steps != len(self._step_loss_trackers):
            raise ValueError(
                f"evaluate runs {steps} inner steps (eval_inner_steps="
                f"{self.eval_inner_steps}, inner_steps={self.inner_steps}) "
                f"but the model was compiled for "
                f"{len(self._step_loss_trackers)}; call compile() again "
                "after changing them.")

    @property
    def metrics(self):
        if not self.compiled:
            return []
        return [
            self._meta_loss_tracker,
            self._pre_loss_tracker,
            self._post_loss_tracker,
            *self._pre_metrics,
            *self._post_metrics,
            *self._step_loss_trackers,
        ]

    def _update_query_metrics(self, episode, outputs):
        losses = outputs["losses"]
        if "pre_pred" in outputs:
            self._update_pre_metrics(episode, losses[:, 0],
                                     outputs["pre_pred"])
        self._post_loss_tracker.update_state(tf.reduce_mean(losses[:, -1]))
        y = flat_tasks(episode["query_y"])
        for metric in self._post_metrics:
            metric.update_state(y, flat_tasks(outputs["post_pred"]))

    def _update_pre_metrics(self, episode, losses, preds):
        self._pre_loss_tracker.update_state(tf.reduce_mean(losses))
        y = flat_tasks(episode["query_y"])
        for metric in self._pre_metrics:
            metric.update_state(y, flat_tasks(preds))

    def _maybe_pre_adaptation_pass(self, episode):
        """Runs `task_parallel.pre_adaptation_pass` and logs it when
        `track_pre_adaptation` says so (every N-th meta-step, and while the
        epoch's `pre_adapt_loss` has no value yet). Returns the per-task
        losses, zeros where the pass did not run."""
        interval = self._pre_adaptation_interval
        tasks = tf.shape(episode["query_x"])[0]
        dtype = self._post_loss_tracker.dtype
        if not interval:
            return tf.zeros([tasks], dtype)

        def run():
            losses, preds = task_parallel.pre_adaptation_pass(self, episode)
            self._update_pre_metrics(episode, losses, preds)
            return tf.cast(losses, dtype)

        if interval == 1:
            return run()
        due = tf.logical_or(
            tf.equal(self._pre_loss_tracker.count, 0),
            tf.equal(self.optimizer.iterations % interval, 0))
        return tf.cond(due, run, lambda: tf.zeros([tasks], dtype))

    def _logs(self, training=False):
        left_out = {id(m) for m in self._step_loss_trackers}
        if not self._pre_adaptation_interval:
            left_out |= {id(m) for m in (self._pre_loss_tracker,
                                         *self._pre_metrics)}
        logs = {m.name: m.result() for m in self.metrics
                if not (training and id(m) in left_out)}
        if training:
            logs["skipped_steps"] = tf.convert_to_tensor(self.skipped_steps)
            logs["consecutive_skipped_steps"] = (
                self.consecutive_skipped_steps.read_value())
        return km_distribute.keras_logs(logs)

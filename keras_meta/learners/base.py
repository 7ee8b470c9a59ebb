"""What every few-shot learner here shares with `keras_meta.MAML`.

`EpisodeLearner` is a `keras.Model` mixin-base: episode dicts (see
`keras_meta.data.episode`) go to `fit`, `evaluate` and `predict` as they
are; the query loss and the compiled metrics are logged (`loss`, then one
log per metric, e.g. `accuracy`); `task_results` gives per-task query
losses and predictions, so `keras_meta.evaluation.adaptation_results`
(mean +- 95% CI over held-out episodes) evaluates every learner alike;
`compile_from_config` rebuilds the optimizer so a loaded `.keras` file
resumes with its optimizer state.
"""

import keras
import numpy as np
import tensorflow as tf
from keras.src.saving import serialization_lib

from keras_meta import saving
from keras_meta.data.episode import EPISODE_KEYS
from keras_meta.data.episode import validate_episode
from keras_meta.maml import checks as maml_checks
from keras_meta.maml.losses_and_metrics import resolve_metric


def flat_tasks(t):
    """[tasks, examples, ...] -> [tasks * examples, ...] (the trailing
    dimensions may be unknown, as the ways of a learner's logits are)."""
    return tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0))


def episode_of(data):
    """The episode dict of a Keras step's `data` (`(x,)` or
    `(x, None, None)` as `train_on_batch` packs it), validated."""
    return maml_checks.episode_of(data)


def check_class_labels(episode, where, ways=None):
    """Raises unless the targets are class indices 0..N-1 and every task's
    support set holds every one of its query classes.

    Args:
        episode: an episode dict with concrete values (or specs, skipped).
        where: names the data in messages.
        ways: the number of classes expected, or None (any N >= 1).
    """
    if any(isinstance(episode[k], tf.TensorSpec) for k in EPISODE_KEYS):
        return
    support = np.asarray(episode["support_y"])
    query = np.asarray(episode["query_y"])
    if support.ndim != 2 or query.ndim != 2:
        raise ValueError(
            f"{where}: the targets must be one class index per example, "
            f"[tasks, examples]; got support_y {support.shape} and query_y "
            f"{query.shape}.")
    labels = np.concatenate([support.ravel(), query.ravel()])
    if labels.dtype.kind not in "iu" and np.any(labels != np.round(labels)):
        raise ValueError(
            f"{where}: the targets must be class indices (ints); got "
            f"values such as {labels[labels != np.round(labels)][0]!r}.")
    if labels.size and labels.min() < 0:
        raise ValueError(
            f"{where}: class indices must be >= 0; got {labels.min()}.")
    if ways is not None and labels.size and labels.max() >= ways:
        raise ValueError(
            f"{where}: labels must be in 0..{ways - 1}; got labels up to "
            f"{int(labels.max())}.")
    for t in range(support.shape[0]):
        missing = sorted(set(query[t].tolist()) - set(support[t].tolist()))
        if missing:
            raise ValueError(
                f"{where}: task {t}'s support set has no example of "
                f"class(es) {missing[:5]}, which its query set holds; every "
                "class needs at least one support example.")


def check_model(model, learner):
    """Raises unless `model` is a built Keras model with trainable
    variables, as `learner` wraps it."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"{learner} needs a keras.Model; got {type(model).__name__}.")
    if not model.built:
        raise ValueError(
            f"The model given to {learner} must be built, e.g. start a "
            "Sequential model with keras.Input(shape) or call it once on a "
            "batch.")
    if not model.trainable_variables:
        raise ValueError(
            f"The model {model.name!r} given to {learner} has no trainable "
            "variables: there is nothing to learn.")


def check_support(model, support_x, support_y):
    """One task's support set for `adapt`: returns it as two tensors.

    Raises:
        ValueError: a task axis where none is expected, inputs and targets
            of different lengths, no examples, or NaN or inf inputs.
    """
    x = tf.convert_to_tensor(support_x)
    y = tf.convert_to_tensor(support_y)
    inputs = getattr(model, "inputs", None)
    if (y.shape.rank < 1 or x.shape.rank < 1 or x.shape[0] != y.shape[0]
            or (inputs and len(inputs[0].shape) != x.shape.rank)):
        expected = (f"[n, {', '.join(map(str, inputs[0].shape[1:]))}]"
                    if inputs else "[n, *input_shape]")
        raise ValueError(
            "adapt() takes one task's support set without a task axis: "
            f"support_x {expected} and support_y [n, ...] for this model; "
            f"got shapes {tuple(x.shape)} and {tuple(y.shape)}.")
    if x.shape[0] == 0:
        raise ValueError("adapt(): the support set holds no examples.")
    maml_checks.check_finite({"support_x": x.numpy(), "support_y": y.numpy()},
                             ("support_x", "support_y"), "adapt() support set")
    return x, y


def check_support_classes(model, support_x, support_y):
    """One task's support set for `adapt` of a classifier: returns
    `(support_x as a tensor, ways)`.

    Raises:
        ValueError: no task axis expected but shapes disagree, no examples,
            NaN or inf inputs, or labels that are not 0..N-1 with every
            class present.
    """
    x = tf.convert_to_tensor(support_x)
    y = np.asarray(support_y)
    if y.ndim != 1 or x.shape.rank < 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            "adapt() takes one task's support set without a task axis: "
            "support_x [n, *input_shape] and support_y [n] class indices; "
            f"got shapes {tuple(x.shape)} and {y.shape}.")
    if y.size == 0:
        raise ValueError("adapt(): the support set holds no examples.")
    inputs = getattr(model, "inputs", None)
    if inputs and len(inputs[0].shape) != x.shape.rank:
        raise ValueError(
            f"adapt(): the model takes inputs of shape {inputs[0].shape}; "
            f"support_x has shape {tuple(x.shape)} (one task, no task axis "
            "expected).")
    maml_checks.check_finite({"support_x": x.numpy()}, ("support_x",),
                             "adapt() support set")
    if y.dtype.kind not in "iu" and np.any(y != np.round(y)):
        raise ValueError(
            f"adapt(): support_y must hold class indices; got {y[:5]!r}.")
    ways = int(y.max()) + 1
    missing = sorted(set(range(ways)) - set(y.astype(np.int64).tolist()))
    if y.min() < 0 or missing:
        raise ValueError(
            "adapt(): support_y must hold the class indices 0..N-1, each "
            f"at least once; got labels {sorted(set(y.tolist()))[:10]} "
            f"(missing: {missing[:10]}).")
    return x, ways


def with_head(body, head, head_values, name=None):
    """A plain `keras.Model`: a copy of `body` (its current weights) then
    `head` (a built layer, or a list of layers applied in order, the last
    built), whose last layer's weights are set to `head_values`."""
    layers = list(head) if isinstance(head, (list, tuple)) else [head]
    copy = keras.models.clone_model(body)
    copy.set_weights(body.get_weights())
    name = name or f"{body.name}_adapted"
    if getattr(copy, "inputs", None):
        outputs = copy.outputs[0]
        for layer in layers:
            outputs = layer(outputs)
        model = keras.Model(copy.inputs, outputs, name=name)
    else:
        model = keras.Sequential([copy, *layers], name=name)
    for variable, value in zip(layers[-1].weights, head_values):
        variable.assign(value)
    return model


def from_saved_config(cls, config, nested):
    """`cls` from a saved config whose keys `nested` hold serialized Keras
    objects (the wrapped model, an optimizer), with the version stamp
    checked (`keras_meta.saving.build`)."""
    config = dict(config)
    for key in nested:
        config[key] = serialization_lib.deserialize_keras_object(config[key])
    return saving.build(cls, config)


class EpisodeLearner(keras.Model):
    """Base of the few-shot learners: compile, checks, logs and config.

    Subclasses implement `train_step` and `_query_outputs(episode,
    training, steps, record)` -> `(losses [tasks] (or [tasks, steps + 1]
    with `record`), predictions [tasks, queries, ...])`, and may override
    `_steps(steps)` (their default step count) and `_check_data(episode,
    where)`.
    """

    # The loss the learner's query pass uses unless compile() names one.
    default_loss = "sparse_categorical_crossentropy"

    def compile(self, optimizer="adam", loss=None, metrics=None,
                run_eagerly=False, steps_per_execution=1,
                jit_compile=False, **kwargs):
        """Configures training.

        Args:
            optimizer: the (meta-)optimizer, any Keras optimizer.
            loss: the per-example query loss; None uses the learner's own
                (cross-entropy on logits for classifiers).
            metrics: Keras metrics on the query set after adaptation;
                'accuracy' picks the accuracy that matches the loss.
            run_eagerly, steps_per_execution, jit_compile: as in
                `keras.Model.compile` (XLA is off by default: on CPU
                convolutions run faster without it).
            **kwargs: other `keras.Model.compile` arguments.
        """
        loss = self._resolve_loss(loss)
        self._loss_obj = keras.losses.get(loss)
        name = getattr(self._loss_obj, "name", None) or getattr(
            self._loss_obj, "__name__", "loss")
        self._loss_kind = maml_checks.loss_kind(name)
        metrics = list(metrics or [])
        self._query_metrics = [resolve_metric(m, name, "") for m in metrics]
        self._loss_tracker = keras.metrics.Mean(name="loss")
        super().compile(optimizer=optimizer, run_eagerly=run_eagerly,
                        steps_per_execution=steps_per_execution,
                        jit_compile=jit_compile, **kwargs)
        maml_checks.check_learning_rate(self.optimizer)
        self._compile_config = serialization_lib.SerializableDict(
            optimizer=self.optimizer, loss=loss, metrics=metrics,
            run_eagerly=run_eagerly, steps_per_execution=steps_per_execution,
            jit_compile=self.jit_compile)

    def _resolve_loss(self, loss):
        if loss is None:
            loss = self.default_loss
        if loss == "sparse_categorical_crossentropy":
            return keras.losses.SparseCategoricalCrossentropy(
                from_logits=True)
        return loss

    def compile_from_config(self, config):
        config = serialization_lib.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self._optimized_variables())

    def _optimized_variables(self):
        """What the compiled optimizer updates, in `train_step`'s order."""
        return list(self.trainable_variables)

    @property
    def metrics(self):
        if not self.compiled:
            return []
        return [self._loss_tracker, *self._query_metrics]

    def _per_example_loss(self, y_true, y_pred):
        fn = getattr(self._loss_obj, "call", self._loss_obj)
        return fn(y_true, y_pred)

    def _update_metrics(self, episode, losses, predictions):
        self._loss_tracker.update_state(tf.reduce_mean(losses))
        y = flat_tasks(episode["query_y"])
        for metric in self._query_metrics:
            metric.update_state(y, flat_tasks(predictions))
        return {m.name: m.result() for m in self.metrics}

    # ---------------------------------------------------------- entry points

    def fit(self, *args, **kwargs):
        # Episodes come from tf.data, which Keras never shuffles.
        kwargs.setdefault("shuffle", False)
        self._validate(args[0] if args else kwargs.get("x"), "fit data")
        self._validate(kwargs.get("validation_data"), "validation_data")
        return super().fit(*args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        if not kwargs.get("_use_cached_eval_dataset"):
            self._validate(x, "evaluate data")
        return super().evaluate(x, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        self._validate(x, "predict data")
        return super().predict(x, *args, **kwargs)

    def _validate(self, data, where):
        """Checks the first episode batch eagerly, before Keras traces."""
        if data is None:
            return
        if not self.compiled:
            raise ValueError(
                f"Call compile() before using {type(self).__name__} on "
                f"{where}; a loaded model is compiled if it was saved "
                "compiled.")
        episode = maml_checks.first_episode(data)
        if isinstance(episode, dict):
            validate_episode(episode, where)
            maml_checks.check_finite(episode, ("support_x", "query_x"),
                                     where)
            self._check_data(episode, where)

    def _check_data(self, episode, where):
        if self._loss_kind == "sparse":
            check_class_labels(episode, where)

    def test_step(self, data):
        episode = episode_of(data)
        losses, predictions = self._query_outputs(episode, training=False)
        return self._update_metrics(episode, losses, predictions)

    def predict_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        if not isinstance(x, dict):
            return self(x, training=False)
        return self._query_outputs(episode_of(x), training=False)[1]

    def task_results(self, episode, steps=None, record=True):
        """Per-task query losses and predictions after adaptation.

        The evaluation entry point shared with `keras_meta.MAML`
        (`keras_meta.evaluation.adaptation_results`).

        Args:
            episode: an episode dict with a task axis.
            steps: adaptation steps, for learners that take steps
                (default: theirs); ignored by the others.
            record: False measures the query loss after the last step
                only (losses [tasks, 1]), saving a query pass per step.

        Returns:
            A dict: `losses`, float [tasks, steps + 1], column k the query
            loss after k steps (as `MAML.task_results`), or [tasks, 1], the
            loss after adaptation, for a learner without steps;
            `predictions`, [tasks, queries, ...].
        """
        if not self.compiled:
            raise ValueError("Call compile() (for its loss) before "
                             "task_results().")
        episode = episode_of(episode)
        steps = self._steps(steps)
        record = bool(record)
        fns = self.__dict__.setdefault("_km_task_results", {})
        if (steps, record) not in fns:
            def run(episode):
                losses, predictions = self._query_outputs(
                    episode, False, steps, record=record)
                if losses.shape.rank == 1:
                    losses = tf.expand_dims(losses, -1)
                return {"losses": losses, "predictions": predictions}

            fns[steps, record] = tf.function(run, autograph=False)
        return fns[steps, record](episode)

    def _steps(self, steps):
        """The adaptation steps to take (None for a learner without)."""
        del steps

    def _query_outputs(self, episode, training, steps=None, record=False):
        """`(losses [tasks] (with `record`, [tasks, steps + 1] or
        [tasks]), predictions [tasks, queries, ...])` after adapting to
        each task's support set."""
        raise NotImplementedError

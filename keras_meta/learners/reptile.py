"""Reptile (Nichol et al., 2018) as a `keras.Model`."""

import keras
import tensorflow as tf
from keras.src.saving import serialization_lib

from keras_meta import saving
from keras_meta import validation
from keras_meta.learners import base


def _mean_state(values, count):
    """Task means of float non-trainable values (moving statistics);
    other dtypes keep the last task's value."""
    return [v / tf.cast(count, v.dtype) if v.dtype.is_floating else v
            for v in values]


@keras.saving.register_keras_serializable(package="keras_meta")
class Reptile(base.EpisodeLearner):
    """Reptile: move the initialization towards each task's adapted weights.

    For each task of a meta-batch, a scratch copy of `model` starts at the
    meta-weights and takes `inner_steps` steps of `inner_optimizer` (any
    Keras optimizer, with fresh state for every task: its variables are
    reset to their initial values) on the task's examples; then the
    compiled (outer) optimizer is applied to the gradient
    `meta_weights - mean_over_tasks(adapted_weights)`. With
    `keras.optimizers.SGD(epsilon)` as the outer optimizer that is the
    paper's update, `meta_weights += epsilon * mean(adapted - meta_weights)`;
    a Keras learning-rate schedule anneals epsilon. First order and memory
    light: one task's forward and backward pass is held at a time; no
    derivative flows through the inner loop. Batch-norm moving statistics
    become the task mean of the adapted copies'.

    `fit` trains on episodes (`keras_meta.data.episode`): each task's
    support and query examples together (`train_on_query=True`, as the
    paper trains on all of a task's examples), or the support set alone.
    Training logs are the loss and metrics of the last inner step on those
    examples; `evaluate`, `predict` and `task_results` adapt on the support
    set with `eval_inner_steps` steps and measure the query set;
    `adapt(support_x, support_y)` returns a plain adapted `keras.Model`
    (its `predict` uses the moving statistics; `adapted(x, training=True)`
    the batch's, as the transductive evaluation does).

    Example:

    ```python
    reptile = keras_meta.Reptile(
        net, inner_optimizer=keras.optimizers.Adam(1e-3, beta_1=0.0),
        inner_steps=5, eval_inner_steps=50)
    reptile.compile(optimizer=keras.optimizers.SGD(1.0),
                    metrics=["accuracy"])
    reptile.fit(keras_meta.data.episodes(train, ways=5, shots=1),
                steps_per_epoch=100)
    adapted = reptile.adapt(support_x, support_y)  # a keras.Model
    ```

    Args:
        model: a built Keras model with trainable variables.
        inner_optimizer: a Keras optimizer or its identifier ("sgd",
            "adam", a config dict); its learning rate is the inner rate.
        inner_steps: int >= 1, inner steps per task in training.
        eval_inner_steps: int >= 1, inner steps in `evaluate`, `predict`,
            `task_results` and `adapt`; defaults to `inner_steps`.
        train_on_query: bool, whether training adapts on the support and
            query examples together (default) or on the support set.
        transductive: bool, query predictions in evaluation use batch
            statistics (True, as the paper's Omniglot runs) or the adapted
            model's moving statistics.
        **kwargs: passed to `keras.Model`.

    Reference:
        - [Nichol et al., 2018](https://arxiv.org/abs/1803.02999)
    """

    default_loss = "sparse_categorical_crossentropy"

    def __init__(self, model, inner_optimizer="sgd", inner_steps=5,
                 eval_inner_steps=None, train_on_query=True,
                 transductive=True, **kwargs):
        super().__init__(**kwargs)
        base.check_model(model, "Reptile")
        validation.check_positive_int("inner_steps", inner_steps)
        validation.check_positive_int("eval_inner_steps", eval_inner_steps,
                                      allow_none=True)
        self.model = model
        self.inner_optimizer = keras.optimizers.get(inner_optimizer)
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps
        self.train_on_query = bool(train_on_query)
        self.transductive = bool(transductive)
        # Scratch copy and its optimizer, kept out of Keras's tracking so
        # that they are neither saved nor meta-trained.
        fast = keras.models.clone_model(model)
        fast.set_weights(model.get_weights())
        self.inner_optimizer.build(fast.trainable_variables)
        initial = [tf.constant(v.numpy())
                   for v in self.inner_optimizer.variables]
        object.__setattr__(self, "_fast", fast)
        object.__setattr__(self, "_inner_initial", initial)
        self.built = True

    def _optimized_variables(self):
        return list(self.model.trainable_variables)

    def _steps(self, steps):
        if steps is not None:
            validation.check_positive_int("steps", steps)
            return steps
        return self.eval_inner_steps or self.inner_steps

    def _loss(self, y, predictions, model):
        loss = tf.reduce_mean(self._per_example_loss(y, predictions))
        if model.losses:
            loss = loss + tf.add_n(model.losses)
        return loss

    def _inner_step(self, x, y):
        """One step of the inner optimizer on the scratch model; returns
        the loss and predictions before it."""
        fast = self._fast
        with tf.GradientTape() as tape:
            predictions = fast(x, training=True)
            loss = self._loss(y, predictions, fast)
        grads = tape.gradient(loss, fast.trainable_variables)
        self.inner_optimizer.apply(grads, fast.trainable_variables)
        return loss, predictions

    def _adapt_scratch(self, x, y, steps, measure=None):
        """Resets the scratch model to the meta-weights and the inner
        optimizer to its initial state, then takes `steps` steps on
        `(x, y)` (the first, then a `tf.while_loop` over the others, so
        the graph holds two copies of a step whatever `steps` is).

        Returns:
            `(loss, predictions, measured)`: the last step's loss and
            predictions (before it), and with `measure` (a function of no
            argument returning a scalar) its values before the first step
            and after each, [steps + 1].
        """
        fast, inner = self._fast, self.inner_optimizer
        for to, source in ((fast.trainable_variables,
                            self.model.trainable_variables),
                           (fast.non_trainable_variables,
                            self.model.non_trainable_variables)):
            for variable, value in zip(to, source):
                variable.assign(value)
        for variable, value in zip(inner.variables, self._inner_initial):
            variable.assign(value)
        measured = tf.TensorArray(tf.float32, steps + 1)
        if measure is not None:
            measured = measured.write(0, measure())
        loss, predictions = self._inner_step(x, y)
        if measure is not None:
            measured = measured.write(1, measure())

        def body(step, loss, predictions, measured):
            loss, predictions = self._inner_step(x, y)
            if measure is not None:
                measured = measured.write(step + 1, measure())
            return step + 1, loss, predictions, measured

        _, loss, predictions, measured = tf.while_loop(
            lambda step, *_: step < steps, body,
            (tf.constant(1), loss, predictions, measured))
        return loss, predictions, (
            measured.stack() if measure is not None else None)

    def _training_examples(self, episode):
        if not self.train_on_query:
            return episode["support_x"], episode["support_y"]
        return (tf.concat([episode["support_x"], episode["query_x"]], 1),
                tf.concat([episode["support_y"], episode["query_y"]], 1))

    def train_step(self, data):
        episode = base.episode_of(data)
        x, y = self._training_examples(episode)
        fast, tasks = self._fast, tf.shape(x)[0]
        zeros = [tf.zeros_like(v) for v in fast.trainable_variables]
        state = [tf.zeros_like(v) for v in fast.non_trainable_variables]

        def body(t, sums, state_sums, losses, predictions):
            loss, pred, _ = self._adapt_scratch(x[t], y[t],
                                                self.inner_steps)
            sums = [s + v for s, v in zip(sums, fast.trainable_variables)]
            state_sums = [s + v if tf.as_dtype(v.dtype).is_floating
                          else tf.convert_to_tensor(v)
                          for s, v in zip(state_sums,
                                          fast.non_trainable_variables)]
            return (t + 1, sums, state_sums, losses.write(t, loss),
                    predictions.write(t, pred))

        _, sums, state_sums, losses, predictions = tf.while_loop(
            lambda t, *_: t < tasks, body,
            (0, zeros, state, tf.TensorArray(tf.float32, tasks),
             tf.TensorArray(fast.outputs[0].dtype if getattr(
                 fast, "outputs", None) else tf.float32, tasks)))
        count = tf.cast(tasks, self.model.trainable_variables[0].dtype)
        grads = [m - s / count
                 for m, s in zip(self.model.trainable_variables, sums)]
        self.optimizer.apply(grads, self.model.trainable_variables)
        for variable, value in zip(self.model.non_trainable_variables,
                                   _mean_state(state_sums, tasks)):
            variable.assign(value)
        n_support = tf.shape(episode["support_x"])[1]
        # The logs: the last inner step's loss and metrics on the query
        # part of the training examples.
        episode = dict(episode, query_y=y[:, n_support:] if
                       self.train_on_query else y)
        preds = predictions.stack()
        if self.train_on_query:
            preds = preds[:, n_support:]
        return self._update_metrics(episode, losses.stack(), preds)

    def _query_outputs(self, episode, training, steps=None, record=False):
        """Adapts on each task's support set; `(losses, predictions)` of
        the query set, losses [tasks] or, with `record`, [tasks, steps + 1]
        (the query loss after 0..steps steps)."""
        del training
        steps = self._steps(steps)
        fast, tasks = self._fast, tf.shape(episode["support_x"])[0]
        width = steps + 1 if record else 1

        def body(t, losses, predictions):
            query_x, query_y = episode["query_x"][t], episode["query_y"][t]

            def measure():
                pred = fast(query_x, training=self.transductive)
                return tf.cast(self._loss(query_y, pred, fast), tf.float32)

            _, _, measured = self._adapt_scratch(
                episode["support_x"][t], episode["support_y"][t], steps,
                measure if record else None)
            pred = fast(query_x, training=self.transductive)
            if not record:
                measured = tf.cast(self._loss(query_y, pred, fast),
                                   tf.float32)[None]
            return (t + 1, losses.write(t, measured),
                    predictions.write(t, pred))

        _, losses, predictions = tf.while_loop(
            lambda t, *_: t < tasks, body,
            (0, tf.TensorArray(tf.float32, tasks, element_shape=[width]),
             tf.TensorArray(tf.float32, tasks)))
        losses = losses.stack()
        return (losses if record else losses[:, 0]), predictions.stack()

    def adapt(self, support_x, support_y, steps=None):
        """Adapts to one task; returns a plain `keras.Model` (a clone of
        `model` with the adapted weights). The meta-weights are untouched.

        Raises:
            ValueError: support inputs and targets of different lengths,
                no examples, or NaN/inf inputs.
        """
        if not self.compiled:
            raise ValueError("Call compile() (for its loss) before adapt().")
        steps = self._steps(steps)
        x, y = base.check_support(self.model, support_x, support_y)
        fns = self.__dict__.setdefault("_km_adapt", {})
        if steps not in fns:
            fns[steps] = tf.function(
                lambda x, y: self._adapt_scratch(x, y, steps)[0],
                autograph=False)
        fns[steps](x, y)
        adapted = keras.models.clone_model(self.model)
        adapted.set_weights(self._fast.get_weights())
        return adapted

    def call(self, inputs, training=None):
        """Episode dict -> adapted query predictions; else the meta-model."""
        if isinstance(inputs, dict):
            return self._query_outputs(base.episode_of(inputs), training)[1]
        return self.model(inputs, training=training)

    def get_config(self):
        config = super().get_config()
        config.update({
            "model": serialization_lib.serialize_keras_object(self.model),
            "inner_optimizer": serialization_lib.serialize_keras_object(
                self.inner_optimizer),
            "inner_steps": self.inner_steps,
            "eval_inner_steps": self.eval_inner_steps,
            "train_on_query": self.train_on_query,
            "transductive": self.transductive,
        })
        return saving.stamp(config)

    @classmethod
    def from_config(cls, config):
        return base.from_saved_config(cls, config, ("model", "inner_optimizer"))

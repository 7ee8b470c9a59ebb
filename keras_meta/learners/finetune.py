"""The "pretrain, then fit a new head" baseline (Chen et al., 2019)."""

import keras
import tensorflow as tf
from keras.src.saving import serialization_lib

from keras_meta import saving
from keras_meta import validation
from keras_meta.learners import base
from keras_meta.rules import baselines
from keras_meta.rules import inner_loop

HEAD_OPTIMIZERS = {"adam": baselines.Adam, "sgd": baselines.SGD}


@keras.saving.register_keras_serializable(package="keras_meta")
class FineTune(base.EpisodeLearner):
    """Pretrain a backbone on all training classes; per task, fit a head.

    `fit` is ordinary supervised training of `backbone` plus a linear head
    of `num_outputs` units on `(x, y)` batches pooled from the training
    tasks (every training class at once, e.g. `keras_meta.data.ImageClasses`
    images and labels). On an episode (`evaluate`, `predict`,
    `task_results`, `adapt`, and `fit`'s `validation_data`), the backbone
    is frozen and run in inference mode; a head is fitted to the support
    set's features with `head_steps` full-batch steps of `head_optimizer`
    (the one inner loop, `keras_meta.rules.inner_loop.unroll`), and the
    query set is predicted with it. Classification (the default loss, or
    any sparse categorical loss): a new zero-initialized head with one unit
    per class of the episode. Regression: the pretrained head is the
    starting point (the MAML paper's "pretrained" baseline, with only the
    head fine-tuned). `adapt` returns a plain `keras.Model` (a copy of the
    backbone, then the fitted head).

    Example:

    ```python
    net = keras_meta.models.conv4_classifier(ways=train.num_classes)
    backbone = keras.Model(net.inputs, net.get_layer("pool").output)
    finetune = keras_meta.FineTune(backbone, train.num_classes,
                                   normalize_features=True)
    finetune.compile(optimizer="adam", metrics=["accuracy"])
    finetune.fit(train.images, train.labels, batch_size=64, epochs=10)
    finetune.evaluate(keras_meta.data.episodes(test, ways=5, shots=1),
                      steps=20)
    adapted = finetune.adapt(support_x, support_y)  # a keras.Model
    ```

    Args:
        backbone: a built Keras model mapping inputs to [batch, dim]
            features.
        num_outputs: units of the pretraining head (training classes, or
            the regression target size).
        head_steps: int >= 1, steps of fitting a head to a support set
            (the default of `steps` in `task_results` and `adapt`).
        head_learning_rate: float > 0.
        head_optimizer: "adam" or "sgd" (full-batch, as in
            `keras_meta.rules.baselines`).
        normalize_features: L2-normalize the features the episode head
            sees (not in pretraining).
        **kwargs: passed to `keras.Model`.

    Reference:
        - [Chen et al., 2019](https://arxiv.org/abs/1904.04232)
        - [Tian et al., 2020](https://arxiv.org/abs/2003.11539)
    """

    def __init__(self, backbone, num_outputs, head_steps=100,
                 head_learning_rate=0.01, head_optimizer="adam",
                 normalize_features=False, **kwargs):
        super().__init__(**kwargs)
        base.check_model(backbone, "FineTune")
        validation.check_positive_int("num_outputs", num_outputs)
        validation.check_positive_int("head_steps", head_steps)
        if head_optimizer not in HEAD_OPTIMIZERS:
            raise ValueError(
                f"`head_optimizer` must be one of {sorted(HEAD_OPTIMIZERS)}"
                f"; got {head_optimizer!r}.")
        if (isinstance(head_learning_rate, bool) or not isinstance(
                head_learning_rate, (int, float))
                or not 0 < head_learning_rate < float("inf")):
            raise ValueError("`head_learning_rate` must be a finite float > "
                             f"0; got {head_learning_rate!r}.")
        self.backbone = backbone
        self.num_outputs = num_outputs
        self.head_steps = head_steps
        self.head_learning_rate = float(head_learning_rate)
        self.head_optimizer = head_optimizer
        self.normalize_features = bool(normalize_features)
        dim = int(backbone.compute_output_spec(keras.KerasTensor(
            (1,) + tuple(backbone.inputs[0].shape[1:]),
            dtype=backbone.inputs[0].dtype)).shape[-1]) if getattr(
                backbone, "inputs", None) else None
        self.head = keras.layers.Dense(num_outputs, name="head")
        self.head.build((None, dim))
        self.built = True

    def _optimized_variables(self):
        return (list(self.backbone.trainable_variables)
                + list(self.head.trainable_variables))

    # ------------------------------------------------------- pretraining

    def train_step(self, data):
        if isinstance(data, dict) or (isinstance(data, tuple)
                                      and isinstance(data[0], dict)):
            raise ValueError(
                "FineTune.fit pretrains on (x, y) batches of all training "
                "classes (labels 0..num_outputs-1), not on episodes; pass "
                "episodes to evaluate(), predict() or validation_data.")
        x, y = data[0], data[1]
        variables = self._optimized_variables()
        with tf.GradientTape() as tape:
            predictions = self.head(self.backbone(x, training=True))
            loss = tf.reduce_mean(self._per_example_loss(y, predictions))
            if self.backbone.losses:
                loss = loss + tf.add_n(self.backbone.losses)
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        self._loss_tracker.update_state(loss)
        for metric in self._query_metrics:
            metric.update_state(y, predictions)
        return {m.name: m.result() for m in self.metrics}

    def call(self, inputs, training=None):
        """Episode dict -> query predictions of fitted heads; else the
        pretrained classifier's (or regressor's) outputs."""
        if isinstance(inputs, dict):
            return self._query_outputs(base.episode_of(inputs), False)[1]
        return self.head(self.backbone(inputs, training=training))

    # ---------------------------------------------------------- episodes

    def _features(self, x):
        flat = tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))
        flat = tf.ensure_shape(flat, [None] + list(x.shape[2:]))
        features = self.backbone(flat, training=False)
        if self.normalize_features:
            features = keras.ops.normalize(features, axis=-1, order=2,
                                            epsilon=1e-12)
        return tf.reshape(features, tf.concat([tf.shape(x)[:2], [-1]], 0))

    def _classifies(self):
        return self._loss_kind == "sparse"

    def _initial_head(self, support_y, tasks, dim):
        if self._classifies():
            ways = tf.cast(tf.reduce_max(support_y), tf.int32) + 1
            return [tf.zeros(tf.stack([tasks, dim, ways])),
                    tf.zeros(tf.stack([tasks, ways]))]
        kernel, bias = self.head.kernel, self.head.bias
        return [tf.tile(tf.convert_to_tensor(kernel)[None], [tasks, 1, 1]),
                tf.tile(tf.convert_to_tensor(bias)[None], [tasks, 1])]

    def fit_heads(self, support_features, support_y, steps, on_step=None):
        """Heads `[kernel [tasks, dim, units], bias [tasks, units]]` fitted
        to each task's support features [tasks, n, dim]."""
        tasks, dim = tf.shape(support_features)[0], tf.shape(
            support_features)[2]
        values = self._initial_head(support_y, tasks, dim)

        def loss_fn(values, step):
            del step
            predictions = apply_head(values, support_features)
            per_task = tf.reduce_mean(
                self._per_example_loss(support_y, predictions), axis=-1)
            return tf.reduce_sum(per_task)

        rule = HEAD_OPTIMIZERS[self.head_optimizer](self.head_learning_rate)
        values, _, _ = inner_loop.unroll(rule, (), values, loss_fn, steps,
                                         second_order=False,
                                         on_step=on_step)
        return values

    def _query_outputs(self, episode, training, steps=None, record=False):
        del training
        steps = self._steps(steps)
        support = self._features(episode["support_x"])
        query = self._features(episode["query_x"])
        query_y = episode["query_y"]

        def query_loss(values):
            return tf.reduce_mean(self._per_example_loss(
                query_y, apply_head(values, query)), axis=-1)

        recorded = []
        on_step = (lambda step, values: recorded.append(query_loss(values))
                   ) if record else None
        if record:
            recorded.append(query_loss(self._initial_head(
                episode["support_y"], tf.shape(support)[0],
                tf.shape(support)[2])))
        values = self.fit_heads(support, episode["support_y"], steps,
                                on_step)
        if record:
            return tf.stack(recorded, axis=1), apply_head(values, query)
        return query_loss(values), apply_head(values, query)

    def _steps(self, steps):
        if steps is None:
            return self.head_steps
        validation.check_positive_int("steps", steps)
        return steps

    def adapt(self, support_x, support_y, steps=None):
        """A plain `keras.Model`: a copy of the backbone, then a head
        fitted to this support set (after L2 normalization with
        `normalize_features`).

        Raises:
            ValueError: a bad support set (shapes, no examples, NaN or
                inf; classification: labels not 0..N-1 with every class).
        """
        if not self.compiled:
            raise ValueError("Call compile() (for its loss) before adapt().")
        steps = self._steps(steps)
        if self._classifies():
            x, _ = base.check_support_classes(self.backbone, support_x,
                                              support_y)
            y = tf.convert_to_tensor(support_y)
        else:
            x, y = base.check_support(self.backbone, support_x, support_y)
        features = self._features(x[None])
        kernel, bias = [v[0] for v in self.fit_heads(features, y[None],
                                                      steps)]
        layers = [keras.layers.Dense(int(kernel.shape[-1]), name="head")]
        if self.normalize_features:
            layers.insert(0, keras.layers.UnitNormalization(name="l2"))
        layers[-1].build((None, int(kernel.shape[0])))
        return base.with_head(self.backbone, layers, [kernel, bias])

    def get_config(self):
        config = super().get_config()
        config.update({
            "backbone": serialization_lib.serialize_keras_object(
                self.backbone),
            "num_outputs": self.num_outputs,
            "head_steps": self.head_steps,
            "head_learning_rate": self.head_learning_rate,
            "head_optimizer": self.head_optimizer,
            "normalize_features": self.normalize_features,
        })
        return saving.stamp(config)

    @classmethod
    def from_config(cls, config):
        return base.from_saved_config(cls, config, ("backbone",))


def apply_head(values, features):
    """`features @ kernel + bias` per task: [tasks, n, dim] -> [tasks, n,
    units]."""
    kernel, bias = values
    return tf.matmul(features, kernel) + bias[:, None, :]

"""Proto-MAML: MAML whose head starts each task from the class prototypes."""

import keras
import tensorflow as tf

from keras_meta.learners import protonet
from keras_meta.maml import batch_norm
from keras_meta.maml.checks import last_layer_with_weights
from keras_meta.maml.model import MAML

# How far below every present class's bias an absent class's lies: e^-100
# of the probability, finite in float16.
ABSENT_MARGIN = 100.0


class PrototypeStart:
    """How a task's starting weights are made from its support set.

    The head is a `Dense` layer `logits = f @ W + b` on the features `f`
    the rest of the network computes. With the class prototypes `c_k`
    (the mean support feature of class k), `W[:, k] = 2 c_k` and
    `b[k] = -|c_k|^2` give `logits_k = -|f - c_k|^2 + |f|^2`: the same
    softmax as a Prototypical Network with squared Euclidean distance.
    A class with no support example (an episode with fewer ways than the
    head's units) gets a zero kernel column and a bias `ABSENT_MARGIN`
    below the lowest present one, so it is never predicted.
    The prototypes are functions of the meta-weights, so meta-gradients
    flow through them (also with `first_order=True`, as in Triantafillou
    et al.'s fo-Proto-MAML).

    With `support_shift = s > 0` and `views` on, each support image's
    feature is the mean over its (2s + 1)^2 moved copies
    (`protonet.moved_copies`), computed in one pass (batch statistics
    over all copies); the inner steps still see the support set itself.
    `ProtoMAML.train_step` turns `views` off.
    """

    def __init__(self, model, head_name, support_shift=0):
        head = model.get_layer(head_name)
        if not isinstance(head, keras.layers.Dense):
            raise ValueError(
                "ProtoMAML's head (the last layer with weights) must be a "
                f"keras.layers.Dense; got {head_name!r}, a "
                f"{type(head).__name__}.")
        if not head.use_bias:
            raise ValueError(
                f"ProtoMAML's head {head_name!r} must have a bias "
                "(use_bias=True); it has none.")
        activation = keras.activations.serialize(head.activation)
        if activation not in ("linear", "softmax"):
            raise ValueError(
                "ProtoMAML's head must output logits or a softmax (its "
                f"activation 'linear' or 'softmax'); {head_name!r} has "
                f"{activation!r}.")
        try:
            inputs = model.inputs
            features = keras.Model(
                inputs[0] if len(inputs) == 1 else inputs, head.input)
        except (AttributeError, ValueError, TypeError) as error:
            raise ValueError(
                "ProtoMAML needs a functional or Sequential model whose head "
                f"takes the features as input; {model.name!r} is not one "
                f"({error}).") from None
        self.ways = int(head.units)
        self.features = features
        self.support_shift = protonet.check_support_shift(support_shift,
                                                          model)
        self.views = True
        trainable = {id(v): i for i, v in enumerate(model.trainable_variables)}
        state = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
        self.feature_params = [trainable[id(v)]
                               for v in features.trainable_variables]
        self.feature_state = [state[id(v)]
                              for v in features.non_trainable_variables]
        self.kernel = trainable[id(head.kernel)]
        self.bias = trainable[id(head.bias)]

    def __call__(self, params, non_trainable, support_x, support_y, training,
                 support_weights=None):
        """`params` with the head replaced by the prototypes' weights."""
        copies = ([support_x] if not (self.views and self.support_shift)
                  else protonet.moved_copies(self.features, support_x,
                                             self.support_shift))
        with batch_norm.exact_moments():
            features, _ = self.features.stateless_call(
                [params[i] for i in self.feature_params],
                [non_trainable[i] for i in self.feature_state],
                tf.concat(copies, 0) if len(copies) > 1 else copies[0],
                training=training)
        if len(copies) > 1:
            features = tf.reduce_mean(tf.reshape(
                features, tf.concat([[len(copies), -1],
                                     tf.shape(features)[1:]], 0)), 0)
        labels = tf.convert_to_tensor(support_y)
        if labels.shape.rank == 2 and labels.shape[-1] == self.ways:
            labels = tf.argmax(labels, axis=-1)  # one-hot targets
        labels = tf.reshape(labels, [-1])
        weights = None if support_weights is None else support_weights[None]
        centers = protonet.prototypes(features[None], labels[None],
                                      self.ways, weights=weights)[0]
        bias = -tf.reduce_sum(tf.square(centers), -1)
        # A class without support examples (fewer ways than the head has
        # units) gets a logit far below the others, not a prototype at 0.
        onehot = tf.one_hot(tf.cast(labels, tf.int32), self.ways)
        if support_weights is not None:
            onehot = onehot * tf.cast(support_weights, onehot.dtype)[:, None]
        present = tf.reduce_sum(onehot, axis=0) > 0
        bias = tf.where(present, bias, tf.reduce_min(bias) - ABSENT_MARGIN)
        start = list(params)
        start[self.kernel] = tf.cast(2.0 * tf.transpose(centers),
                                     params[self.kernel].dtype)
        start[self.bias] = tf.cast(bias, params[self.bias].dtype)
        return start


@keras.saving.register_keras_serializable(package="keras_meta")
class ProtoMAML(MAML):
    """MAML whose head starts every task at the support set's prototypes.

    Before the inner steps, the head (the last layer with weights, a
    `Dense` layer) is set from the support set: `W[:, k] = 2 c_k`,
    `b[k] = -|c_k|^2` with `c_k` the mean feature (the head's input) of
    class k. Before adaptation the model is then a Prototypical Network
    (squared Euclidean distance); the inner loop adapts from there, and
    meta-gradients flow through the prototypes into the body. The head's
    own meta-learned weights are unused (their meta-gradient is zero).
    Training, evaluation, `adapt`, serving and `export` all start from the
    prototypes.

    With `support_shift=s`, everything but training (evaluate, predict,
    `task_results`, `adapt`, `adapt_and_predict`, `export`) takes each
    support image's feature for the prototypes as the mean over its
    (2s + 1)^2 copies moved by every offset of up to s pixels per axis, as
    `ProtoNet(support_shift=s)` does (in one training-mode pass when the
    model is transductive: batch statistics over all copies); the inner
    steps adapt on the support set itself. Setting `support_shift` on a
    built model takes effect at the next call.

    Example:

    ```python
    net = keras_meta.models.conv4_classifier(ways=20)
    maml = keras_meta.ProtoMAML(net, inner_learning_rate=8.0)
    maml.compile(optimizer="adam", loss=keras.losses.
                 SparseCategoricalCrossentropy(from_logits=True),
                 metrics=["accuracy"])
    maml.fit(episodes, steps_per_epoch=100, epochs=10)
    ```

    Args:
        model: a built functional or Sequential classifier whose last
            layer with weights is a `Dense` layer with a bias and a
            linear or softmax activation; its units are the ways.
        support_shift: an int >= 0; the support views' largest offset in
            pixels (0: each support image once). Needs image inputs
            [batch, height, width, channels].
        **kwargs: other `keras_meta.MAML` arguments.

    Reference:
        - [Triantafillou et al., 2020 (Meta-Dataset)](
          https://arxiv.org/abs/1903.03096)
    """

    def __init__(self, model, support_shift=0, **kwargs):
        super().__init__(model, **kwargs)
        head = last_layer_with_weights(model)
        # A plain attribute kept out of Keras's tracking: the feature
        # model shares the wrapped model's layers and variables.
        object.__setattr__(self, "_start",
                           PrototypeStart(model, head, support_shift))

    @property
    def support_shift(self):
        return self._start.support_shift

    @support_shift.setter
    def support_shift(self, value):
        self._start.support_shift = protonet.check_support_shift(
            value, self.model)
        self._trace_again()

    def train_step(self, data):
        # Meta-training starts from one view of each support image.
        self._start.views = False
        try:
            return super().train_step(data)
        finally:
            self._start.views = True

    def get_config(self):
        config = super().get_config()
        config["support_shift"] = self.support_shift
        return config

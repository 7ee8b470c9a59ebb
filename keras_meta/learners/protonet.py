"""Prototypical Networks (Snell et al., 2017) as a `keras.Model`."""

import functools

import keras
import tensorflow as tf
from keras.src.saving import serialization_lib

from keras_meta import saving
from keras_meta import validation
from keras_meta.data import few_shot
from keras_meta.data.image_classes import ResizeImages
from keras_meta.learners import base
from keras_meta.maml import export as maml_export

DISTANCES = ("euclidean", "cosine")
# The scale of cosine logits when none is given: cosines lie in [-1, 1],
# too flat for a softmax over classes.
DEFAULT_COSINE_SCALE = 10.0


def prototypes(embeddings, labels, ways, weights=None):
    """Mean embedding per class.

    Args:
        embeddings: float [tasks, examples, dim].
        labels: int [tasks, examples], class indices 0..ways-1.
        ways: number of classes (an int or a scalar tensor).
        weights: optional [tasks, examples] weights of the examples (0 on
            padded rows): each prototype is their weighted mean.

    Returns:
        float [tasks, ways, dim]; a class without examples (or weight)
        gets zeros.
    """
    onehot = tf.one_hot(tf.cast(labels, tf.int32), ways,
                        dtype=embeddings.dtype)
    if weights is not None:
        onehot = onehot * tf.cast(weights, embeddings.dtype)[..., None]
    sums = tf.einsum("tsn,tsd->tnd", onehot, embeddings)
    counts = tf.reduce_sum(onehot, axis=1)[..., None]
    return sums / tf.maximum(counts, 1.0)


def refine_prototypes(centers, support_embeddings, support_y,
                      query_embeddings, steps, distance="euclidean",
                      scale=1.0):
    """Transductive prototypes: soft k-means over the queries (Ren et al.,
    2018). Each of `steps` rounds makes every prototype the mean of its
    support embeddings (weight 1 each) and of every query embedding,
    weighted by that query's softmax probability of the class under the
    current prototypes.

    Args:
        centers: float [tasks, ways, dim], the support set's prototypes.
        support_embeddings: float [tasks, examples, dim].
        support_y: int [tasks, examples], class indices 0..ways-1.
        query_embeddings: float [tasks, queries, dim].
        steps: Python int >= 0.
        distance, scale: as `distance_logits`.

    Returns:
        float [tasks, ways, dim].
    """
    onehot = tf.one_hot(tf.cast(support_y, tf.int32), tf.shape(centers)[1],
                        dtype=centers.dtype)
    sums = tf.einsum("tsn,tsd->tnd", onehot, support_embeddings)
    counts = tf.reduce_sum(onehot, axis=1)
    for _ in range(steps):
        probs = tf.nn.softmax(distance_logits(query_embeddings, centers,
                                              distance, scale))
        centers = ((sums + tf.einsum("tqn,tqd->tnd", probs,
                                     query_embeddings))
                   / (counts + tf.reduce_sum(probs, axis=1))[..., None])
    return centers


def distance_logits(queries, centers, distance="euclidean", scale=1.0):
    """Logits of queries against class centers.

    Args:
        queries: float [..., queries, dim].
        centers: float [..., ways, dim].
        distance: "euclidean": `-scale * ||q - c||^2`; "cosine":
            `scale * cos(q, c)`.
        scale: a positive float.

    Returns:
        float [..., queries, ways].
    """
    if distance == "euclidean":
        diff = tf.expand_dims(queries, -2) - tf.expand_dims(centers, -3)
        return -scale * tf.reduce_sum(tf.square(diff), axis=-1)
    q = tf.math.l2_normalize(queries, axis=-1)
    c = tf.math.l2_normalize(centers, axis=-1)
    return scale * tf.matmul(q, c, transpose_b=True)


def view_offsets(shift):
    """Every (down, right) offset of up to `shift` pixels per axis."""
    return [(d, r) for d in range(-shift, shift + 1)
            for r in range(-shift, shift + 1)]


def moved_copies(network, x, shift):
    """The (2 shift + 1)^2 copies of images `x` [n, h, w, c] moved by every
    offset of up to `shift` pixels per axis (`view_offsets`), edges
    repeated, in the pixels `network` sees: after its resize layer, if it
    has one (its own resize then passes them through)."""
    resize = next((layer for layer in network.layers
                   if isinstance(layer, ResizeImages)), None)
    if resize is not None:
        x = tf.cast(resize(x), x.dtype)
    return [few_shot.shifted(x, down, right)
            for down, right in view_offsets(shift)]


def check_distance(distance, scale):
    """Raises on an unknown distance or a scale that is not a finite float
    > 0; returns the scale to use (None: the distance's default)."""
    if distance not in DISTANCES:
        raise ValueError(
            f"`distance` must be one of {DISTANCES}; got {distance!r}.")
    if scale is None:
        return DEFAULT_COSINE_SCALE if distance == "cosine" else 1.0
    if (isinstance(scale, bool) or not isinstance(scale, (int, float))
            or not 0 < scale < float("inf")):
        raise ValueError(f"`scale` must be a finite float > 0; got {scale!r}.")
    return float(scale)


def check_support_shift(support_shift, embedding):
    """Raises unless `support_shift` is an int >= 0 that `embedding`'s
    inputs can take (images [batch, h, w, c] where it is > 0); returns
    it."""
    validation.check_non_negative_int("support_shift", support_shift)
    if support_shift:
        shape = tuple(embedding.inputs[0].shape) if getattr(
            embedding, "inputs", None) else None
        if shape is None or len(shape) != 4:
            raise ValueError(
                f"support_shift={support_shift} moves images; the embedding "
                f"takes inputs of shape {shape}, not images [batch, height, "
                "width, channels].")
    return int(support_shift)


@keras.saving.register_keras_serializable(package="keras_meta")
class PrototypeHead(keras.layers.Layer):
    """Classifies embeddings by their distance to fixed class prototypes.

    The head of the model `ProtoNet.adapt` returns: the prototypes are a
    non-trainable weight [ways, dim] (saved with the model), the logits
    those of `distance_logits`.

    Example:

    ```python
    head = PrototypeHead(ways=5, distance="euclidean")
    head.build((None, 64))
    head.prototypes.assign(centers)  # [5, 64]
    logits = head(embeddings)        # [batch, 5]
    ```

    Args:
        ways: number of classes.
        distance: "euclidean" or "cosine".
        scale: logit scale (None: 1 for euclidean, 10 for cosine).
    """

    def __init__(self, ways, distance="euclidean", scale=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(ways, bool) or not isinstance(ways, int) or ways < 1:
            raise ValueError(f"`ways` must be an int >= 1; got {ways!r}.")
        self.ways = ways
        self.distance = distance
        self.scale = check_distance(distance, scale)

    def build(self, input_shape):
        self.prototypes = self.add_weight(
            shape=(self.ways, int(input_shape[-1])), initializer="zeros",
            trainable=False, name="prototypes")

    def call(self, inputs):
        centers = tf.cast(self.prototypes, inputs.dtype)
        return distance_logits(inputs[None], centers[None], self.distance,
                               self.scale)[0]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.ways,)

    def get_config(self):
        config = super().get_config()
        config.update(ways=self.ways, distance=self.distance,
                      scale=self.scale)
        return config


@keras.saving.register_keras_serializable(package="keras_meta")
class ProtoNet(base.EpisodeLearner):
    """Prototypical Networks: classify queries by the nearest class mean.

    Each task's support examples are embedded by `embedding`; a class's
    prototype is the mean of its support embeddings; a query's logits are
    the negative squared Euclidean distances to the prototypes (or scaled
    cosine similarities). `fit` trains the embedding on the query
    cross-entropy of episodes (`keras_meta.data.episodes`), with the
    embedding's batch normalization in training mode over the whole meta-
    batch; `evaluate`, `predict` and `task_results` run it in inference
    mode. `adapt(support_x, support_y)` returns a plain `keras.Model`: a
    copy of the embedding followed by a `PrototypeHead` holding the
    prototypes, which classifies new inputs as the episode pass does (raw
    uint8 images too, when the embedding starts with the resize and
    rescale layers of `keras_meta.models.conv4_classifier`).

    With `support_shift=s`, everything but training (evaluate, predict,
    `task_results`, `adapt`, `export`) embeds each support image as the
    mean embedding of its (2s + 1)^2 copies moved by every offset of up to
    s pixels per axis (edges repeated, as the training shift of
    `keras_meta.data.episodes` moves images; after the embedding's resize
    layer, if it has one, so in the pixels the network sees). Queries are
    embedded once, so classifying costs what it did; a network trained
    with shifted images gets steadier prototypes from one example.

    With `transductive_steps=t`, evaluate, predict, `task_results` and the
    exported `adapt_and_predict` also use the episode's unlabeled queries:
    `refine_prototypes` moves the prototypes `t` rounds of soft k-means
    toward them, so a query's logits depend on the other queries it comes
    with. `adapt` sees only the support set and does not refine.

    Episode targets are class indices 0..N-1; every class of a task must
    have a support example (checked before anything is compiled).

    Example:

    ```python
    net = keras_meta.models.conv4_classifier(ways=5)
    embedding = keras.Model(net.inputs, net.get_layer("pool").output)
    protonet = keras_meta.ProtoNet(embedding)
    protonet.compile(optimizer=keras.optimizers.Adam(1e-3),
                     metrics=["accuracy"])
    protonet.fit(keras_meta.data.episodes(train, ways=20, shots=1),
                 steps_per_epoch=100)
    adapted = protonet.adapt(support_x, support_y)  # a keras.Model
    adapted.predict(query_x)                         # [queries, ways] logits
    ```

    Args:
        embedding: a built Keras model mapping inputs to [batch, dim]
            embeddings.
        distance: "euclidean" (squared) or "cosine".
        scale: logit scale (None: 1 for euclidean, 10 for cosine).
        support_shift: an int >= 0; the support views' largest offset in
            pixels (0: each support image embedded once). Needs image
            inputs [batch, height, width, channels].
        transductive_steps: an int >= 0; rounds of soft k-means over the
            queries outside training (0: the support set alone).
        **kwargs: passed to `keras.Model` (e.g. `name`).

    References:
        - [Snell et al., 2017](https://arxiv.org/abs/1703.05175)
        - [Ren et al., 2018](https://arxiv.org/abs/1803.00676)
          (transductive refinement)
    """

    def __init__(self, embedding, distance="euclidean", scale=None,
                 support_shift=0, transductive_steps=0, **kwargs):
        super().__init__(**kwargs)
        base.check_model(embedding, "ProtoNet")
        self.embedding = embedding
        self.distance = distance
        self.scale = check_distance(distance, scale)
        self.support_shift = support_shift
        self.transductive_steps = transductive_steps
        self.built = True

    # The evaluation settings may change on a built model (the training
    # script sets them after a resume); functions traced before are
    # traced again.
    @property
    def support_shift(self):
        return self._support_shift

    @support_shift.setter
    def support_shift(self, value):
        self._support_shift = check_support_shift(value, self.embedding)
        self._trace_again()

    @property
    def transductive_steps(self):
        return self._transductive_steps

    @transductive_steps.setter
    def transductive_steps(self, value):
        validation.check_non_negative_int("transductive_steps", value)
        self._transductive_steps = int(value)
        self._trace_again()

    def _trace_again(self):
        self.__dict__.pop("_km_task_results", None)
        self.test_function = self.predict_function = None

    def _support_embedding(self, x):
        """Inference-mode embeddings [n, dim] of support inputs [n, ...]:
        with `support_shift`, each the mean over its moved copies."""
        if not self.support_shift:
            return self.embedding(x, training=False)
        views = [self.embedding(view, training=False)
                 for view in moved_copies(self.embedding, x,
                                          self.support_shift)]
        return tf.add_n(views) / float(len(views))

    def _embed(self, x, training, embed=None):
        """[tasks, n, ...] -> [tasks, n, dim], by `embed` (a function of
        [batch, ...] inputs; default the embedding) on all tasks at once."""
        flat = tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))
        flat = tf.ensure_shape(flat, [None] + list(x.shape[2:]))
        out = (embed or functools.partial(self.embedding,
                                          training=training))(flat)
        return tf.reshape(out, tf.concat([tf.shape(x)[:2], [-1]], 0))

    def episode_logits(self, episode, training=False):
        """Query logits [tasks, queries, ways] of an episode dict."""
        support, query = episode["support_x"], episode["query_x"]
        n_support = tf.shape(support)[1]
        ways = tf.cast(tf.reduce_max(episode["support_y"]), tf.int32) + 1
        if self.support_shift and not training:
            support_embeddings = self._embed(support, training,
                                             self._support_embedding)
            query_embeddings = self._embed(query, training)
        else:
            # One pass over support and query: batch statistics over both.
            both = self._embed(tf.concat([support, query], axis=1),
                               training)
            support_embeddings = both[:, :n_support]
            query_embeddings = both[:, n_support:]
        centers = prototypes(support_embeddings, episode["support_y"], ways)
        if not training:
            centers = refine_prototypes(
                centers, support_embeddings, episode["support_y"],
                query_embeddings, self.transductive_steps, self.distance,
                self.scale)
        return distance_logits(query_embeddings, centers, self.distance,
                               self.scale)

    def _query_outputs(self, episode, training, steps=None, record=False):
        del steps, record  # no inner steps
        logits = self.episode_logits(episode, training)
        losses = tf.reduce_mean(
            self._per_example_loss(episode["query_y"], logits), axis=-1)
        return losses, logits

    def train_step(self, data):
        episode = base.episode_of(data)
        with tf.GradientTape() as tape:
            losses, logits = self._query_outputs(episode, training=True)
            loss = tf.reduce_mean(losses)
            if self.embedding.losses:
                loss = loss + tf.add_n(self.embedding.losses)
        variables = self.embedding.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        return self._update_metrics(episode, losses, logits)

    def call(self, inputs, training=None):
        """Episode dict -> query logits; else the embeddings of `inputs`."""
        if isinstance(inputs, dict):
            return self.episode_logits(base.episode_of(inputs), training)
        return self.embedding(inputs, training=training)

    def adapt(self, support_x, support_y):
        """A plain `keras.Model` that classifies by this task's prototypes.

        Args:
            support_x: one task's support inputs [n, *input_shape].
            support_y: int class indices [n], every class 0..N-1 present.

        Returns:
            `keras.Model`: a copy of the embedding (its weights fixed now)
            followed by a `PrototypeHead` with the N prototypes; its
            outputs are logits [batch, N].

        Raises:
            ValueError: the support set is empty, holds NaN or inf, or its
                labels are not 0..N-1 with every class present.
        """
        support_x, ways = base.check_support_classes(
            self.embedding, support_x, support_y)
        embeddings = self._support_embedding(tf.convert_to_tensor(support_x))
        centers = prototypes(
            embeddings[None],
            tf.convert_to_tensor(support_y)[None], ways)[0]
        head = PrototypeHead(ways, self.distance, self.scale,
                             name="prototypes")
        head.build((None, int(centers.shape[-1])))
        return base.with_head(self.embedding, head, [centers])

    def export(self, filepath, format="tf_saved_model", verbose=None,
               input_signature=None):
        """Exports a SavedModel that classifies a new task's queries from
        its support set, loadable where only TensorFlow is installed.

        Overrides `keras.Model.export` with the same call. Signatures, each
        returning `{"output_0": ...}`: `adapt_and_predict(support_x,
        support_y, query_x)` (int32 labels 0..N-1; the query logits
        [m, N] against the support set's prototypes, the embedding in
        inference mode; also `serving_default`) and `predict(x)` (the
        embeddings).

        Example:

        ```python
        protonet.export("omniglot_server")
        served = tf.saved_model.load("omniglot_server")
        logits = served.signatures["adapt_and_predict"](
            support_x=sx, support_y=sy, query_x=qx)["output_0"]
        ```

        Args:
            filepath: the SavedModel directory.
            format: "tf_saved_model" only.
            verbose: print the signatures (default True).
            input_signature: the embedding's input batch spec (default its
                `inputs`).
        """
        maml_export.check_format(format, "ProtoNet")
        x = maml_export.input_spec(self.embedding, input_signature,
                                   "ProtoNet")

        def adapt_and_predict(support_x, support_y, query_x):
            support = self._support_embedding(support_x)[None]
            queries = self.embedding(query_x, training=False)[None]
            centers = prototypes(support, support_y[None],
                                 tf.reduce_max(support_y) + 1)
            centers = refine_prototypes(
                centers, support, support_y[None], queries,
                self.transductive_steps, self.distance, self.scale)
            return distance_logits(queries, centers, self.distance,
                                   self.scale)[0]

        fns = {
            "adapt_and_predict": (adapt_and_predict, [
                tf.TensorSpec(x.shape, x.dtype, name="support_x"),
                tf.TensorSpec([None], tf.int32, name="support_y"),
                tf.TensorSpec(x.shape, x.dtype, name="query_x")]),
            "predict": (lambda x: self.embedding(x, training=False), [x]),
        }
        maml_export.save_signatures(fns, filepath, "ProtoNet", verbose)

    def get_config(self):
        config = super().get_config()
        config.update({
            "embedding": serialization_lib.serialize_keras_object(
                self.embedding),
            "distance": self.distance,
            "scale": self.scale,
            "support_shift": self.support_shift,
            "transductive_steps": self.transductive_steps,
        })
        return saving.stamp(config)

    @classmethod
    def from_config(cls, config):
        return base.from_saved_config(cls, config, ("embedding",))

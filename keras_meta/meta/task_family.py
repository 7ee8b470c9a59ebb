"""A meta-training task distribution meant to generalize: small real tasks
with task augmentation.

Tasks are 8 x 8 and 14 x 14 downsampled Omniglot characters of the
training alphabets only (every alphabet of the offline subset but
`problems.OMNIGLOT_HELD_OUT`, which stay for evaluation), learned by

  * MLP classifiers and small convnets (strided 3 x 3 convolutions) of
    random widths, depths and activations, on `num_classes`-way tasks
    drawn from those characters' 20 drawings each; optionally
    (`layer_norm`) with layer normalization after each hidden layer;
  * dense autoencoders of random widths and depths reconstructing the
    characters (mean per-pixel sigmoid cross-entropy);
  * with `kinds` naming them (`EXTRA_KINDS`): classifiers of the
    characters' 2 x 2 patch tokens through an embedding table
    (`"tokens"`: sparse rows); MLPs on fresh Gaussian inputs labelled by
    a random linear teacher (`"teacher"`, and of rank 2
    `"easy_teacher"`: nothing to memorize, so the held-out loss keeps
    falling as the logits grow); MLPs regressing a random teacher of the
    characters' pixels with per-drawing label noise (`"regression"`,
    mean squared error).

Each character's first `TRAIN_DRAWINGS` drawings are the training
examples; the rest are validation examples, seen only by
`validation_loss` (a meta-objective on held-out data:
`MetaTrainer(..., meta_objective="validation")`).

`sample_tasks(seed, count)` draws `count` architectures (each a
`problems.Problem` with fixed shapes, so a compiled truncation per
architecture is reused by every instance of it); the batch size is part
of the architecture. Each instance (`Problem.sample(seed)`) then draws
its own task augmentation, which changes no shape:

  * `init_scale`: the Glorot-uniform initialization times a log-uniform
    factor;
  * per-tensor reparameterization: the optimizer sees `q = p / s` for
    the model's parameter `p`, `s` log-uniform per tensor, which scales
    each tensor's gradient by `s` and its values by `1 / s`;
  * `loss_scale`: the loss the optimizer sees is multiplied by a
    log-uniform factor (gradients alike). The `"log"` meta-loss does not
    see it (a constant added to the log losses of both runs of a PES pair
    and of a truncation); `"mean"` would.

Horizon lengths are augmented by the trainer (`MetaTrainer(...,
horizon_range=...)`). Without the Omniglot zips the same tasks run on
synthetic characters (`synthetic_characters`): random blob prototypes
with per-drawing pixel noise.
"""

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from keras_meta.meta import problems as problems_lib

KINDS = ("mlp", "conv", "autoencoder")
# Kinds a run may add (`sample_tasks(kinds=...)`; the module docstring).
EXTRA_KINDS = ("tokens", "teacher", "easy_teacher", "regression")
SIZES = (8, 14)
ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid")
WIDTHS = (16, 32, 64, 128)
FILTERS = (4, 8, 16, 32)
BATCH_SIZES = (16, 32, 64, 128)
CLASS_COUNTS = (5, 10, 20)
# Drawings 0..14 of each character train; 15..19 are validation examples.
TRAIN_DRAWINGS = 15


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Ranges of the per-instance task augmentation (log-uniform factors,
    each applied with probability `probability`, else 1)."""

    init_scale: tuple = (0.5, 2.0)
    param_scale: tuple = (0.1, 10.0)
    loss_scale: tuple = (1e-2, 1e2)
    probability: float = 0.5


NO_AUGMENTATION = Augmentation(probability=0.0)


def training_characters(directory=None):
    """`{(alphabet, character): [20, 28, 28, 1] ink images}` of the
    training alphabets (every one but `problems.OMNIGLOT_HELD_OUT`)."""
    chars = problems_lib.load_omniglot(directory, 28)
    return {k: v for k, v in chars.items()
            if k[0] not in problems_lib.OMNIGLOT_HELD_OUT}


def synthetic_characters(size, num_classes=200, drawings=20, seed=0):
    """Stand-in characters: `[num_classes, drawings, size, size, 1]` ink
    images, each class a smoothed random blob thresholded to its top
    quarter, each drawing its class with 10% of pixels flipped."""
    rng = np.random.default_rng(seed)
    low = rng.normal(size=(num_classes, 4, 4, 1)).astype("float32")
    smooth = tf.image.resize(low, (size, size), "bicubic").numpy()
    cut = np.quantile(smooth.reshape(num_classes, -1), 0.75, axis=1)
    protos = (smooth > cut[:, None, None, None]).astype("float32")
    flips = rng.random((num_classes, drawings) + protos.shape[1:]) < 0.1
    return np.abs(protos[:, None] - flips).astype("float32")


_IMAGES = {}


def character_images(size, directory=None):
    """`([classes, 20, size, size, 1] float32 images, source name)`: the
    training alphabets' characters resized (area averaging) to `size`, or
    synthetic characters where Omniglot is absent. Cached per size."""
    key = (size, directory)
    if key not in _IMAGES:
        if problems_lib.omniglot_available(directory):
            chars = training_characters(directory)
            full = np.stack([chars[k] for k in sorted(chars)])
            flat = full.reshape((-1,) + full.shape[2:])
            small = tf.image.resize(flat, (size, size), "area").numpy()
            _IMAGES[key] = (small.reshape(full.shape[:2] + small.shape[1:]),
                            "omniglot")
        else:
            _IMAGES[key] = (synthetic_characters(size), "synthetic")
    return _IMAGES[key]


def _log_uniform(rng, bounds, probability, size=None):
    draw = np.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]),
                              size))
    keep = rng.random(size) < probability
    return np.where(keep, draw, 1.0)


class AugmentedProblem(problems_lib.Problem):
    """A Keras model on character images, with per-instance augmentation.

    `loss(params, task, batch)` is `loss_scale * f(model with weights
    s_i * params_i)` on the minibatch's training examples (drawings
    `0..TRAIN_DRAWINGS-1` of each character); `validation_loss` the same
    on its validation examples (the other drawings, never trained on);
    `task` is `(scales, loss_scale)` as tensors. Subclasses define
    `_data_task(rng)`, `_batch(task, n, rng, drawings)` (one part of a
    minibatch, a tuple) and `_unscaled_loss(outputs, part)`.

    Args:
        model: a built Keras model without non-trainable variables.
        images: `[classes, drawings, size, size, 1]` images.
        batch_size: examples per minibatch.
        augmentation: an `Augmentation`.
        name: the problem's name.
        dtype: float dtype of parameters and data.
    """

    def __init__(self, model, images, batch_size, augmentation, name,
                 dtype="float32"):
        if model.non_trainable_variables:
            raise ValueError("AugmentedProblem needs a model without "
                             "non-trainable variables.")
        self.model, self.images = model, images
        self.batch_size, self.augmentation = batch_size, augmentation
        self.name, self.dtype = name, dtype

    def sample(self, seed):
        rng = np.random.default_rng(seed)
        aug = self.augmentation
        init = problems_lib.init_params(self.model, seed, self.dtype)
        init_scale = _log_uniform(rng, aug.init_scale, aug.probability)
        scales = _log_uniform(rng, aug.param_scale, aug.probability,
                              len(init))
        loss_scale = _log_uniform(rng, aug.loss_scale, aug.probability)
        params = [tf.cast(p * (float(init_scale) / float(s)), self.dtype)
                  for p, s in zip(init, scales)]
        task = {"data": self._data_task(rng),
                "scales": [float(x) for x in scales],
                "loss_scale": float(loss_scale)}
        return problems_lib.Instance(params, task)

    def task_tensors(self, instance):
        task = instance.task
        return ([tf.constant(s, self.dtype) for s in task["scales"]],
                tf.constant(task["loss_scale"], self.dtype))

    def batches(self, instance, n, seed):
        """`(training part, validation part)`, each a tuple of arrays
        with `n` minibatches on the leading axis."""
        rng = np.random.default_rng(seed)
        drawings = self.images.shape[1]
        parts = (np.arange(TRAIN_DRAWINGS),
                 np.arange(TRAIN_DRAWINGS, drawings))
        return tuple(tuple(tf.constant(b) for b in self._batch(
            instance.task["data"], n, rng, d)) for d in parts)

    def _part_loss(self, params, task, part):
        scales, loss_scale = task
        weights = [s * p for s, p in zip(scales, params)]
        outputs, _ = self.model.stateless_call(weights, [], part[0],
                                               training=True)
        return loss_scale * self._unscaled_loss(outputs, part)

    def loss(self, params, task, batch):
        return self._part_loss(params, task, batch[0])

    def validation_loss(self, params, task, batch):
        """The loss on the minibatch's validation examples."""
        return self._part_loss(params, task, batch[1])

    def _data_task(self, rng):
        raise NotImplementedError

    def _batch(self, data_task, n, rng, drawings):
        raise NotImplementedError

    def _unscaled_loss(self, outputs, batch):
        raise NotImplementedError


def _cross_entropy(logits, labels):
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
        labels, logits, from_logits=True))


class ClassificationProblem(AugmentedProblem):
    """`num_classes`-way classification of random training characters."""

    def __init__(self, model, images, batch_size, augmentation, name,
                 num_classes, dtype="float32"):
        super().__init__(model, images, batch_size, augmentation, name,
                         dtype)
        self.num_classes = num_classes

    def _data_task(self, rng):
        return rng.choice(len(self.images), self.num_classes, replace=False)

    def _batch(self, data_task, n, rng, drawings):
        cls = rng.integers(0, self.num_classes, size=(n, self.batch_size))
        idx = rng.choice(drawings, size=cls.shape)
        x = self.images[np.asarray(data_task)[cls], idx]
        return x.astype(self.dtype), cls.astype("int32")

    def _unscaled_loss(self, outputs, batch):
        return _cross_entropy(outputs, batch[1])


class AutoencoderProblem(AugmentedProblem):
    """Reconstruction of training characters; the instance's data task is
    a random subset of 50 characters."""

    def _data_task(self, rng):
        return rng.choice(len(self.images), min(50, len(self.images)),
                          replace=False)

    def _batch(self, data_task, n, rng, drawings):
        cls = rng.choice(np.asarray(data_task), size=(n, self.batch_size))
        idx = rng.choice(drawings, size=cls.shape)
        x = self.images[cls, idx].astype(self.dtype)
        return (x,)

    def _unscaled_loss(self, outputs, batch):
        target = tf.reshape(batch[0], tf.shape(outputs))
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
            labels=target, logits=outputs))


class TokenProblem(ClassificationProblem):
    """`ClassificationProblem` on a bag of patch tokens: each 2 x 2 patch
    of a character, its pixels thresholded at half ink, is the token
    `position * 16 + pattern`, so the model's embedding table has
    `(size / 2)^2 * 16` rows, of which a minibatch touches only part (the
    blank patterns of every position and the strokes of its characters)."""

    def _batch(self, data_task, n, rng, drawings):
        x, y = super()._batch(data_task, n, rng, drawings)
        return patch_tokens(x), y


def patch_tokens(images):
    """`[..., size, size, 1]` images -> `[..., (size // 2)^2]` int32 tokens
    (`TokenProblem`)."""
    *lead, size, _, _ = images.shape
    half = size // 2
    bits = (images[..., :2 * half, :2 * half, 0] > 0.5).astype("int32")
    bits = bits.reshape(tuple(lead) + (half, 2, half, 2))
    pattern = (bits[..., 0, :, 0] + 2 * bits[..., 0, :, 1]
               + 4 * bits[..., 1, :, 0] + 8 * bits[..., 1, :, 1])
    position = np.arange(half * half).reshape(half, half)
    return (position * 16 + pattern).reshape(tuple(lead) + (-1,)).astype(
        "int32")


class TeacherProblem(AugmentedProblem):
    """Fresh standard-normal `size` x `size` "images" labelled by a fixed
    random linear teacher (`argmax(flatten(x) W)`, `W` drawn per
    instance, of rank `rank` where given): every minibatch is new and the
    labels are realizable, so the loss on held-out examples keeps falling
    as the logits grow, with nothing to memorize (unlike the characters'
    15 drawings). A rank-2 teacher is easy: the loss falls towards 0."""

    def __init__(self, model, size, batch_size, augmentation, name,
                 num_classes, dtype="float32", rank=None):
        super().__init__(model, None, batch_size, augmentation, name, dtype)
        self.size, self.num_classes, self.rank = size, num_classes, rank

    def _data_task(self, rng):
        inputs = self.size * self.size
        if self.rank is None:
            return rng.normal(size=(inputs, self.num_classes))
        return (rng.normal(size=(inputs, self.rank))
                @ rng.normal(size=(self.rank, self.num_classes)))

    def batches(self, instance, n, seed):
        rng = np.random.default_rng(seed)
        teacher = np.asarray(instance.task["data"])
        parts = []
        for _ in range(2):  # training, validation: both fresh
            x = rng.normal(size=(n, self.batch_size, self.size, self.size, 1))
            y = np.argmax(x.reshape(n, self.batch_size, -1) @ teacher, -1)
            parts.append((tf.constant(x.astype(self.dtype)),
                          tf.constant(y.astype("int32"))))
        return tuple(parts)

    def _unscaled_loss(self, outputs, batch):
        return _cross_entropy(outputs, batch[1])


class RegressionProblem(AugmentedProblem):
    """Mean squared error on a scalar target of 50 random training
    characters' drawings: a random tanh teacher of the pixels plus label
    noise fixed per drawing (so the training drawings' noise can be
    memorized and held-out drawings punish it). Targets are of order 1;
    the noise's standard deviation (0.1 to 0.5) is drawn per instance."""

    def _data_task(self, rng):
        chars = rng.choice(len(self.images), min(50, len(self.images)),
                           replace=False)
        inputs = int(np.prod(self.images.shape[2:]))
        hidden = rng.normal(size=(inputs, 16)) / math.sqrt(inputs / 4.0)
        out = rng.normal(size=(16,)) / math.sqrt(16 * 0.4)
        noise = rng.uniform(0.1, 0.5) * rng.normal(
            size=(len(chars), self.images.shape[1]))
        return chars, hidden, out, noise

    def _batch(self, data_task, n, rng, drawings):
        chars, hidden, out, noise = data_task
        which = rng.integers(0, len(chars), size=(n, self.batch_size))
        idx = rng.choice(drawings, size=which.shape)
        x = self.images[np.asarray(chars)[which], idx].astype(self.dtype)
        flat = x.reshape(which.shape + (-1,))
        y = np.tanh(flat @ hidden) @ out + noise[which, idx]
        return x, y.astype(self.dtype)[..., None]

    def _unscaled_loss(self, outputs, batch):
        return tf.reduce_mean(tf.square(outputs - batch[1]))


def _hidden(make, activation, layer_norm):
    """The layer `make(activation)`; with `layer_norm`, `make(None)`, then
    `LayerNormalization`, then the activation (pre-activation
    normalization: the layer's weights become scale-invariant)."""
    if not layer_norm:
        return [make(activation)]
    return [make(None), keras.layers.LayerNormalization(),
            keras.layers.Activation(activation)]


def _draw_layer_norm(rng, layer_norm):
    # No draw at probability 0: the architectures of a seed stay those of
    # runs made before the option existed.
    return bool(layer_norm) and bool(rng.random() < layer_norm)


def _mlp(rng, size, outputs, layer_norm=0.0):
    depth = int(rng.integers(1, 4))
    widths = [int(rng.choice(WIDTHS)) for _ in range(depth)]
    activation = str(rng.choice(ACTIVATIONS))
    norm = _draw_layer_norm(rng, layer_norm)
    layers = [keras.Input((size, size, 1)), keras.layers.Flatten()]
    for w in widths:
        layers += _hidden(lambda a, w=w: keras.layers.Dense(w, activation=a),
                          activation, norm)
    layers += [keras.layers.Dense(outputs)]
    tag = "x".join(map(str, widths)) + "_" + activation + ("_ln" * norm)
    return keras.Sequential(layers), tag


def _conv(rng, size, outputs, layer_norm=0.0):
    depth = int(rng.integers(1, 3 if size <= 8 else 4))
    filters = [int(rng.choice(FILTERS)) for _ in range(depth)]
    activation = str(rng.choice(ACTIVATIONS))
    norm = _draw_layer_norm(rng, layer_norm)
    layers = [keras.Input((size, size, 1))]
    for f in filters:
        layers += _hidden(lambda a, f=f: keras.layers.Conv2D(
            f, 3, strides=2, padding="same", activation=a), activation, norm)
    layers += [keras.layers.Flatten(), keras.layers.Dense(outputs)]
    tag = ("c" + "x".join(map(str, filters)) + "_" + activation
           + ("_ln" * norm))
    return keras.Sequential(layers), tag


def _token_classifier(rng, size, outputs):
    width = int(rng.choice(WIDTHS))
    dim = int(rng.choice((8, 16, 32)))
    activation = str(rng.choice(ACTIVATIONS))
    model = keras.Sequential([
        keras.Input(((size // 2) ** 2,), dtype="int32"),
        keras.layers.Embedding((size // 2) ** 2 * 16, dim),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(width, activation=activation),
        keras.layers.Dense(outputs)])
    return model, f"e{dim}x{width}_{activation}"


def _autoencoder(rng, size):
    depth = int(rng.integers(1, 3))
    widths = [int(rng.choice(WIDTHS)) for _ in range(depth)]
    bottleneck = int(rng.choice((4, 8, 16)))
    activation = str(rng.choice(ACTIVATIONS))
    dense = lambda w: keras.layers.Dense(w, activation=activation)  # noqa
    layers = [keras.Input((size, size, 1)), keras.layers.Flatten()]
    layers += [dense(w) for w in widths] + [keras.layers.Dense(bottleneck)]
    layers += [dense(w) for w in reversed(widths)]
    layers += [keras.layers.Dense(size * size)]
    tag = "x".join(map(str, widths + [bottleneck])) + "_" + activation
    return keras.Sequential(layers), tag


def make_task(kind, size, rng, augmentation=Augmentation(), directory=None,
              dtype="float32", layer_norm=0.0):
    """One random architecture of `kind` (`KINDS`) on `size` x `size`
    characters, its hyperparameters drawn from the NumPy generator `rng`;
    an MLP or convnet has layer normalization after each hidden layer
    with probability `layer_norm`.
    """
    if kind not in KINDS + EXTRA_KINDS:
        raise ValueError(f"kind must be one of {KINDS + EXTRA_KINDS}, got "
                         f"{kind!r}.")
    batch_size = int(rng.choice(BATCH_SIZES))
    if kind in ("teacher", "easy_teacher"):
        num_classes = int(rng.choice(CLASS_COUNTS))
        model, tag = _mlp(rng, size, num_classes, layer_norm)
        return TeacherProblem(
            model, size, batch_size, augmentation,
            f"{kind}{size}_{tag}_{num_classes}way_b{batch_size}",
            num_classes, dtype, rank=2 if kind == "easy_teacher" else None)
    images, source = character_images(size, directory)
    if kind == "autoencoder":
        model, tag = _autoencoder(rng, size)
        return AutoencoderProblem(
            model, images, batch_size, augmentation,
            f"ae{size}_{tag}_b{batch_size}_{source}", dtype)
    if kind == "regression":
        model, tag = _mlp(rng, size, 1, layer_norm)
        return RegressionProblem(
            model, images, batch_size, augmentation,
            f"regression{size}_{tag}_b{batch_size}_{source}", dtype)
    num_classes = int(rng.choice(CLASS_COUNTS))
    if kind == "tokens":
        model, tag = _token_classifier(rng, size, num_classes)
        return TokenProblem(
            model, images, batch_size, augmentation,
            f"tokens{size}_{tag}_{num_classes}way_b{batch_size}_{source}",
            num_classes, dtype)
    model, tag = (_mlp if kind == "mlp" else _conv)(rng, size, num_classes,
                                                    layer_norm)
    return ClassificationProblem(
        model, images, batch_size, augmentation,
        f"{kind}{size}_{tag}_{num_classes}way_b{batch_size}_{source}",
        num_classes, dtype)


def sample_tasks(seed, count, kinds=KINDS, sizes=SIZES,
                 augmentation=Augmentation(), directory=None,
                 dtype="float32", layer_norm=0.0):
    """`count` random architectures, cycling through `kinds` and drawing
    the image size from `sizes`; the same `seed` gives the same list.

    Args:
        seed: seeds the architectures (instances have their own seeds).
        count: number of problems.
        kinds: of `KINDS` and `EXTRA_KINDS`.
        sizes: image sizes (of `SIZES` or any other).
        augmentation: per-instance `Augmentation` (`NO_AUGMENTATION`: off).
        directory: the Omniglot zips' folder (default
            `problems.OMNIGLOT_DIR`); synthetic characters without them.
        dtype: float dtype.
        layer_norm: probability, per MLP or convnet, of layer
            normalization after each hidden layer (in [0, 1]; 0 draws
            nothing, so a seed's architectures are unchanged).

    Returns:
        list of `AugmentedProblem`.
    """
    if not 0.0 <= layer_norm <= 1.0:
        raise ValueError(
            f"layer_norm must be a probability in [0, 1], got {layer_norm!r}.")
    rng = np.random.default_rng(seed)
    return [make_task(kinds[i % len(kinds)], int(rng.choice(sizes)), rng,
                      augmentation, directory, dtype, layer_norm)
            for i in range(count)]

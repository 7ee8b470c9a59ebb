"""Optimizee problem families for meta-training and evaluating optimizers.

A `Problem` is a family of optimization problems with a functional loss:

    instance = problem.sample(seed)             # a fresh problem and x0
    batches = problem.batches(instance, n, seed) # n minibatches, leading axis n
    loss = problem.loss(params, instance.task, batch)

`params` is a list of tensors (for Keras models, the values of the model's
trainable variables, evaluated with `model.stateless_call`; no variable is
ever assigned), so the meta-trainer can differentiate through many steps.

Families:
  * `QuadraticProblem`: the paper's f(x) = mean_b ||W_b x_b - y_b||^2 with
    batch 128 x 10 dims, W, y ~ U[0, 1), x0 ~ N(0, 0.01^2). `num_problems`
    stacks independent problems whose losses are summed, so every coordinate
    sees exactly the gradient of its own problem.
  * `KerasProblem`: a Keras classifier (`mlp_model`: 784-20-10 sigmoid as the
    paper's MNIST problem, or ReLU/wider variants; `conv_model`: a small
    strided convnet) on a `DataSource`: `TeacherData` (inputs N(0, 1),
    labels from a random teacher network: no download), `OmniglotData`
    (10-way problems drawn from the Omniglot background zips in
    ../shared/data/omniglot) or `TFDSData` (any TFDS image dataset, for
    users with internet).
"""

import collections
import functools
import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_meta.data import image_classes

Instance = collections.namedtuple("Instance", ["params", "task"])

REPO_ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
OMNIGLOT_DIR = os.environ.get(
    "KERAS_META_OMNIGLOT_DIR",
    os.path.join(REPO_ROOT, "..", "shared", "data", "omniglot"),
)
OMNIGLOT_ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
# Alphabets held out from meta-training (evaluation only).
OMNIGLOT_HELD_OUT = image_classes.OMNIGLOT_HELD_OUT_ALPHABETS


class Problem:
    """Base class of a problem family."""

    name = "problem"

    def sample(self, seed):
        """Returns an `Instance` (initial params list, task tensors)."""
        raise NotImplementedError

    def batches(self, instance, n, seed):
        """Returns `n` minibatches stacked on a leading axis (a nest)."""
        raise NotImplementedError

    def loss(self, params, task, batch):
        """Scalar loss of `params` on `batch` of problem `task`."""
        raise NotImplementedError

    def task_tensors(self, instance):
        """The tensors of `instance` that `loss` reads as `task`."""
        return ()


class QuadraticProblem(Problem):
    """The paper's quadratic: mean_b ||W_b x_b - y_b||^2, summed over problems.

    Args:
        batch_size: quadratics per problem (paper: 128).
        num_dims: dimension of each (paper: 10).
        num_problems: independent problems stacked and optimized together;
            their losses add, so gradients equal the single-problem ones.
        dtype: float dtype.
        split: if True, each problem's x is its own parameter tensor (a
            list of `num_problems` tensors of shape (batch_size, num_dims))
            instead of one stacked tensor, so that a per-tensor rule
            (`RuleConfig(granularity="tensor")`) sees each problem alone.
    """

    def __init__(self, batch_size=128, num_dims=10, num_problems=1,
                 dtype="float32", split=False):
        self.batch_size = batch_size
        self.num_dims = num_dims
        self.num_problems = num_problems
        self.dtype = dtype
        self.split = split
        self.name = "quadratic"

    def sample(self, seed):
        rng = np.random.default_rng(seed)
        shape = (self.num_problems, self.batch_size)
        w = rng.uniform(size=shape + (self.num_dims, self.num_dims))
        y = rng.uniform(size=shape + (self.num_dims,))
        x0 = rng.normal(0.0, 0.01, size=shape + (self.num_dims,))
        cast = lambda a: tf.constant(a, self.dtype)  # noqa: E731
        params = [cast(x) for x in x0] if self.split else [cast(x0)]
        return Instance(params, (cast(w), cast(y)))

    def batches(self, instance, n, seed):
        return tf.zeros((n,), self.dtype)  # deterministic: no data

    def task_tensors(self, instance):
        return instance.task

    def per_problem_loss(self, params, task):
        w, y = task
        x = tf.stack(params) if self.split else params[0]
        r = tf.einsum("pbij,pbj->pbi", w, x) - y
        return tf.reduce_mean(tf.reduce_sum(tf.square(r), -1), -1)

    def loss(self, params, task, batch):
        return tf.reduce_sum(self.per_problem_loss(params, task))


def mlp_model(input_shape=(28, 28, 1), hidden=(20,), activation="sigmoid",
              num_classes=10):
    """An MLP classifier (default: the paper's 784-20-10 sigmoid)."""
    layers = [keras.Input(input_shape), keras.layers.Flatten()]
    layers += [keras.layers.Dense(h, activation=activation) for h in hidden]
    layers += [keras.layers.Dense(num_classes)]
    return keras.Sequential(layers)


def conv_model(input_shape=(28, 28, 1), filters=(8, 16), num_classes=10):
    """A small convnet: strided 3x3 ReLU convolutions, then a linear layer."""
    layers = [keras.Input(input_shape)]
    layers += [keras.layers.Conv2D(f, 3, strides=2, padding="same",
                                   activation="relu") for f in filters]
    layers += [keras.layers.Flatten(), keras.layers.Dense(num_classes)]
    return keras.Sequential(layers)


def init_params(model, seed, dtype="float32"):
    """Fresh Glorot-uniform kernels and zero biases for `model`'s variables."""
    rng = np.random.default_rng(seed)
    out = []
    for v in model.trainable_variables:
        shape = tuple(v.shape)
        if len(shape) >= 2:
            receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
            fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            out.append(tf.constant(rng.uniform(-limit, limit, shape), dtype))
        else:
            out.append(tf.zeros(shape, dtype))
    return out


class DataSource:
    """Supplies classification tasks and minibatches for a `KerasProblem`."""

    input_shape = (28, 28, 1)
    num_classes = 10

    def sample_task(self, rng):
        raise NotImplementedError

    def sample_batches(self, task, n, batch_size, rng):
        raise NotImplementedError


class TeacherData(DataSource):
    """Inputs N(0, 1); labels = argmax of a random one-hidden-layer teacher.

    Each task draws a new teacher (784-32-10, tanh). No download needed.

    Args:
        input_shape: shape of one input.
        num_classes: classes (teacher outputs).
        hidden: teacher hidden units.
        pool_size: None (default) draws fresh inputs for every batch (the
            population loss); an int draws a fixed training set of that
            many examples per task, and batches go through it in shuffled
            epochs, as `fit` does on a finite dataset (so the training loss
            can fall towards 0).
    """

    name = "teacher"

    def __init__(self, input_shape=(28, 28, 1), num_classes=10, hidden=32,
                 pool_size=None):
        if pool_size is not None and pool_size < 1:
            raise ValueError(f"pool_size must be None or >= 1, got {pool_size}.")
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.hidden = hidden
        self.pool_size = pool_size

    def _label(self, task, x):
        w1, w2 = task[:2]
        return np.argmax(np.tanh(x @ w1) @ w2, axis=-1).astype("int32")

    def sample_task(self, rng):
        d = int(np.prod(self.input_shape))
        w1 = rng.normal(0, 1 / math.sqrt(d), (d, self.hidden))
        w2 = rng.normal(0, 1 / math.sqrt(self.hidden),
                        (self.hidden, self.num_classes))
        task = (w1.astype("float32"), w2.astype("float32"))
        if self.pool_size is None:
            return task
        x = rng.normal(size=(self.pool_size, d)).astype("float32")
        return task + (x, self._label(task, x))

    def sample_batches(self, task, n, batch_size, rng):
        if self.pool_size is None:
            x = rng.normal(size=(n * batch_size, task[0].shape[0]))
            x = x.astype("float32")
            y = self._label(task, x)
        else:
            pool_x, pool_y = task[2:]
            epochs = -(-n * batch_size // len(pool_x))
            index = np.concatenate(
                [rng.permutation(len(pool_x)) for _ in range(epochs)]
            )[: n * batch_size]
            x, y = pool_x[index], pool_y[index]
        x = x.reshape((n, batch_size) + self.input_shape)
        return x, y.reshape(n, batch_size)


def omniglot_available(directory=None):
    """True if the Omniglot background zips are present."""
    directory = directory or OMNIGLOT_DIR
    return all(os.path.exists(os.path.join(directory, z)) for z in OMNIGLOT_ZIPS)


@functools.lru_cache(maxsize=4)
def load_omniglot(directory=None, size=28):
    """Reads the Omniglot background zips into memory.

    Returns:
        dict `{(alphabet, character): float32 array [20, size, size, 1]}`,
        ink = 1, background = 0. Greek and Latin, present in both zips with
        the same drawings, are read once.

    Raises:
        FileNotFoundError: if the zips are absent (see `omniglot_available`).
    """
    directory = directory or OMNIGLOT_DIR
    if not omniglot_available(directory):
        raise FileNotFoundError(
            f"Omniglot zips {OMNIGLOT_ZIPS} not found in {directory!r}; the "
            "Omniglot problems need ../shared/data/omniglot (or set "
            "KERAS_META_OMNIGLOT_DIR)."
        )
    # The one Omniglot reader of the package (decode, de-duplicate, resize
    # with the models' resize layer), here as floats with ink = 1.
    data = image_classes.load_omniglot(directory, image_size=(size, size))
    images = 1.0 - data.images.astype("float32") / 255.0
    chars = {}
    for index, name in enumerate(data.class_names):
        alphabet, character = name.split("/")
        chars[(alphabet, character)] = images[data.labels == index]
    return chars


class OmniglotData(DataSource):
    """10-way classification tasks from the offline Omniglot subset.

    Each task picks `num_classes` random characters of the split's alphabets
    and trains on their 20 drawings each (resized to 28 x 28).

    Args:
        split: `"train"` (alphabets not in `OMNIGLOT_HELD_OUT`) or
            `"heldout"`.
        directory: folder with the zips; default ../shared/data/omniglot.
    """

    name = "omniglot"

    def __init__(self, split="train", num_classes=10, directory=None):
        chars = load_omniglot(directory)
        held = lambda k: k[0] in OMNIGLOT_HELD_OUT  # noqa: E731
        keys = [k for k in chars if held(k) == (split == "heldout")]
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        self.images = np.stack([chars[k] for k in keys])  # [C, 20, 28, 28, 1]
        self.num_classes = num_classes
        self.input_shape = self.images.shape[2:]

    def sample_task(self, rng):
        return rng.choice(len(self.images), self.num_classes, replace=False)

    def sample_batches(self, task, n, batch_size, rng):
        cls = rng.integers(0, self.num_classes, size=(n, batch_size))
        idx = rng.integers(0, self.images.shape[1], size=(n, batch_size))
        x = self.images[np.asarray(task)[cls], idx]
        return x, cls.astype("int32")


class TFDSData(DataSource):
    """Tasks from a TFDS image dataset (needs it prepared or internet).

    Loads `split` of `name` once, converts to 28 x 28 grayscale in [0, 1],
    and draws `num_classes`-way tasks from its labels.
    """

    name = "tfds"

    def __init__(self, name="mnist", split="train", num_classes=10,
                 max_examples=20000):
        import tensorflow_datasets as tfds

        ds = tfds.load(name, split=f"{split}[:{max_examples}]",
                       as_supervised=True, batch_size=-1)
        x, y = tfds.as_numpy(ds)
        x = tf.image.resize(tf.cast(x, tf.float32), (28, 28)).numpy()
        if x.shape[-1] != 1:
            x = x.mean(-1, keepdims=True)
        self.x = (x / max(float(x.max()), 1.0)).astype("float32")
        self.y = y.astype("int64")
        self.labels = np.unique(self.y)
        self.num_classes = min(num_classes, len(self.labels))
        self.input_shape = (28, 28, 1)

    def sample_task(self, rng):
        chosen = rng.choice(self.labels, self.num_classes, replace=False)
        return [np.flatnonzero(self.y == c) for c in chosen]

    def sample_batches(self, task, n, batch_size, rng):
        cls = rng.integers(0, self.num_classes, size=(n, batch_size))
        x = np.empty((n, batch_size) + self.input_shape, "float32")
        for c, pool in enumerate(task):
            mask = cls == c
            x[mask] = self.x[rng.choice(pool, mask.sum())]
        return x, cls.astype("int32")


class KerasProblem(Problem):
    """A Keras classifier on a `DataSource`, evaluated with `stateless_call`.

    Args:
        model_fn: builds the (uncompiled) Keras model; called once.
        data: a `DataSource`.
        batch_size: minibatch size (paper: 128).
        name: family name.
    """

    def __init__(self, model_fn, data, batch_size=128, name="keras"):
        self.model = model_fn()
        if self.model.non_trainable_variables:
            raise ValueError(
                "KerasProblem supports models without non-trainable "
                "variables (no BatchNormalization)."
            )
        self.data = data
        self.batch_size = batch_size
        self.name = name

    def sample(self, seed):
        rng = np.random.default_rng(seed)
        return Instance(init_params(self.model, seed),
                        self.data.sample_task(rng))

    def batches(self, instance, n, seed):
        rng = np.random.default_rng(seed)
        x, y = self.data.sample_batches(instance.task, n, self.batch_size, rng)
        return tf.constant(x), tf.constant(y)

    def loss(self, params, task, batch):
        x, y = batch
        logits, _ = self.model.stateless_call(params, [], x, training=True)
        return tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(
                y, logits, from_logits=True
            )
        )


FAMILIES = {
    # name: (factory, meta-trained by default?)
    "quadratic": lambda: QuadraticProblem(),
    "mlp_teacher": lambda: KerasProblem(mlp_model, TeacherData(),
                                        name="mlp_teacher"),
    "mlp_teacher_pool": lambda: KerasProblem(
        mlp_model, TeacherData(pool_size=2048), name="mlp_teacher_pool"),
    # A narrower convnet than the benchmark's held-out (8, 16) one.
    "conv_small_teacher_pool": lambda: KerasProblem(
        functools.partial(conv_model, filters=(4, 8)),
        TeacherData(pool_size=2048), name="conv_small_teacher_pool"),
    "mlp_omniglot": lambda: KerasProblem(mlp_model, OmniglotData("train"),
                                         name="mlp_omniglot"),
    "conv_teacher": lambda: KerasProblem(conv_model, TeacherData(),
                                         name="conv_teacher"),
    "conv_omniglot": lambda: KerasProblem(conv_model, OmniglotData("train"),
                                          name="conv_omniglot"),
    "mlp_relu_teacher": lambda: KerasProblem(
        functools.partial(mlp_model, activation="relu"), TeacherData(),
        name="mlp_relu_teacher"),
    "mlp_wide_teacher": lambda: KerasProblem(
        functools.partial(mlp_model, hidden=(100, 100)), TeacherData(),
        name="mlp_wide_teacher"),
    "mlp_omniglot_heldout": lambda: KerasProblem(
        mlp_model, OmniglotData("heldout"), name="mlp_omniglot_heldout"),
    "mlp_mnist": lambda: KerasProblem(mlp_model, TFDSData("mnist"),
                                      name="mlp_mnist"),
}


def make_problem(name):
    """Builds the problem family `name` (see `FAMILIES`).

    Raises:
        ValueError: unknown name.
        FileNotFoundError: an Omniglot family without the data.
    """
    if name not in FAMILIES:
        raise ValueError(
            f"Unknown problem {name!r}; expected one of {sorted(FAMILIES)}."
        )
    return FAMILIES[name]()

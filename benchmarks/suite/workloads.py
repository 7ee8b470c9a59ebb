"""The suite's workloads: data generator, Keras model, loss, metric, batch.

Each model builder returns a fresh, uncompiled Keras model; the weights
depend on Keras's global seed (`keras.utils.set_random_seed`).
"""

import dataclasses
from typing import Callable

import keras

from benchmarks.suite import data as suite_data

_CLASSIFY = "sparse_categorical_crossentropy"


@dataclasses.dataclass(frozen=True)
class Workload:
    """One held-out training problem.

    Attributes:
        data: seed -> `suite_data.Splits`.
        build: () -> an uncompiled Keras model.
        loss: the compiled (and reported) loss.
        metric: a Keras metric name (higher or lower is better as named).
        batch_size: fixed training batch size.
    """

    data: Callable
    build: Callable
    loss: object
    metric: str
    batch_size: int


def _conv_bn(x, filters, strides=1):
    x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same",
                            use_bias=False)(x)
    return keras.layers.BatchNormalization()(x)


def omniglot_convnet(classes=59):
    """Two conv-BN-ReLU-maxpool blocks (16, 32 filters) on 28x28 ink,
    flattened into the logits."""
    inputs = keras.Input((28, 28, 1))
    x = inputs
    for filters in (16, 32):
        x = keras.layers.ReLU()(_conv_bn(x, filters))
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x))


def dense_autoencoder():
    """196-128-32-128-196 (ReLU), sigmoid reconstruction of 14x14 ink."""
    return keras.Sequential([
        keras.Input((196,)), keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(196, activation="sigmoid")])


def embedding_classifier(vocab=2000, dim=32, classes=4):
    """Embedding -> mean over tokens -> Dense(32, ReLU) -> logits."""
    return keras.Sequential([
        keras.Input((None,), dtype="int32"),
        keras.layers.Embedding(vocab, dim),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(classes)])


def transformer_encoder(vocab=10, length=16, dim=32, classes=4):
    """Token + position embeddings, one post-LN encoder block
    (2-head `MultiHeadAttention`, FFN 64), logits from position 0."""
    tokens = keras.Input((length,), dtype="int32")
    x = keras.layers.Embedding(vocab, dim)(tokens)
    x = x + keras.layers.Embedding(length, dim)(keras.ops.arange(length))
    attended = keras.layers.MultiHeadAttention(2, dim // 2)(x, x)
    x = keras.layers.LayerNormalization()(x + attended)
    ffn = keras.layers.Dense(64, activation="relu")(x)
    x = keras.layers.LayerNormalization()(x + keras.layers.Dense(dim)(ffn))
    return keras.Model(tokens, keras.layers.Dense(classes)(x[:, 0]))


def gru_classifier(classes=5):
    """GRU(32) over a [40, 1] signal, logits from the last state."""
    return keras.Sequential([keras.Input((40, 1)), keras.layers.GRU(32),
                             keras.layers.Dense(classes)])


def _residual_block(x, filters, strides):
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, strides)
    y = keras.layers.ReLU()(_conv_bn(x, filters, strides))
    return keras.layers.ReLU()(_conv_bn(y, filters) + shortcut)


def residual_convnet(classes=8):
    """Conv-BN-ReLU stem (16) and residual blocks (16, 32 stride 2)."""
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.ReLU()(_conv_bn(inputs, 16))
    x = _residual_block(x, 16, 1)
    x = _residual_block(x, 32, 2)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x))


def regression_mlp():
    """16-128-128-1 ReLU MLP."""
    return keras.Sequential([
        keras.Input((16,)), keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(128, activation="relu"), keras.layers.Dense(1)])


def classifier(data, build, batch_size):
    return Workload(data, build, keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), "accuracy", batch_size)


WORKLOADS = {
    "omniglot_bn_conv": classifier(suite_data.omniglot_classes,
                                    omniglot_convnet, 32),
    "omniglot_autoencoder": Workload(suite_data.omniglot_pixels,
                                     dense_autoencoder, "mse", "mae", 32),
    "embedding_text": classifier(suite_data.topic_tokens,
                                  embedding_classifier, 32),
    "transformer": classifier(suite_data.match_counts,
                               transformer_encoder, 32),
    "gru": classifier(suite_data.noisy_frequencies, gru_classifier, 32),
    "resnet_bn": classifier(suite_data.shapes, residual_convnet, 32),
    "regression_mlp": Workload(suite_data.smooth_regression, regression_mlp,
                               "mse", "mae", 32),
}

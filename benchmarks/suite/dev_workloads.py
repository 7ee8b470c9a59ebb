"""Development workloads: where LearnedOptimizer candidates are chosen.

They are kept apart from the held-out suite (`workloads.WORKLOADS`) so
that the suite's numbers are not selected on: other data (the Omniglot
TRAINING alphabets, whose drawings the meta-training task family also
uses, and other synthetic generators), other architectures.

- `omniglot_mlp`: 196-64-100 ReLU MLP classifying 100 characters of the
  training alphabets at 14x14; drawings split 12 / 4 / 4 (accuracy).
- `omniglot_conv`: two-conv (16, 32) ReLU convnet without batch norm, same
  data (accuracy).
- `tanh_regression`: 8-64-64-1 tanh MLP on a random sine network plus
  noise, MSE (MAE).
- `keywords`: `Embedding(800, 16)` + mean pooling + Dense(16) on uniform
  token documents whose class shows in rare keyword tokens (sparse
  gradients; accuracy).
- `lstm_products`: LSTM(16) telling the sign of a sum of products of two
  noisy input channels (accuracy).
- `attention_majority`: a pre-LN attention block (4 heads) and mean
  pooling naming the most frequent token of a sequence (layer-normalized,
  scale-invariant weights, as in Transformers; accuracy).
- `lexicon_sentiment`: `Embedding(4000, 24)` + mean pooling + Dense(24)
  on Zipf-distributed token documents labelled by the sign of a hidden
  lexicon's polarity sum (most rows rare, so sparse gradients touch few
  of them; accuracy). Added in round 13: `keywords`' uniform tokens touch
  nearly every row each step, so no development workload had the
  long-tailed vocabulary of real text.
"""

import keras
import numpy as np

from benchmarks.suite import data as suite_data
from benchmarks.suite import workloads as suite_workloads
from keras_meta.meta import task_family

OMNIGLOT_CLASSES = 100
OMNIGLOT_SIZE = 14


def omniglot_training_alphabets(seed):
    """100 fixed characters of the training alphabets (synthetic stand-ins
    where Omniglot is absent) at 14x14, split by drawing (seed unused)."""
    del seed
    images, _ = task_family.character_images(OMNIGLOT_SIZE)
    pick = np.random.default_rng(1234).choice(len(images), OMNIGLOT_CLASSES,
                                              replace=False)
    images = images[pick]
    parts, start = {}, 0
    for name, count in zip(("train", "val", "test"),
                           suite_data.OMNIGLOT_SPLIT):
        x = images[:, start:start + count]
        parts[name] = (x.reshape((-1,) + x.shape[2:]).astype("float32"),
                       np.repeat(np.arange(OMNIGLOT_CLASSES), count)
                       .astype("int32"))
        start += count
    return suite_data.Splits(**parts)


def sine_regression(seed, sizes=(800, 1000, 2000), dim=8, noise=0.2):
    """y = sin(1.5 x W1) . w2 + noise for a random sine network."""
    rng = np.random.default_rng(seed + 777)
    n = sum(sizes)
    x = rng.normal(size=(n, dim)).astype("float32")
    w1 = rng.normal(size=(dim, 32)) / np.sqrt(dim)
    w2 = rng.normal(size=(32,)) / np.sqrt(32)
    y = np.sin(1.5 * x @ w1) @ w2 + noise * rng.normal(size=n)
    return suite_data._split(x, y.astype("float32")[:, None], sizes)


def keyword_tokens(seed, sizes=(1500, 1000, 2000), vocab=800, length=30,
                   classes=3, keywords=15, share=0.08):
    """Uniform tokens; each token is, with probability `share`, one of the
    document's class keywords."""
    rng = np.random.default_rng(seed + 999)
    n = sum(sizes)
    x = rng.integers(0, vocab, (n, length))
    words = rng.choice(vocab, (classes, keywords), replace=False)
    y = rng.integers(0, classes, n)
    hit = rng.random((n, length)) < share
    x = np.where(hit, words[y[:, None], rng.integers(0, keywords,
                                                     (n, length))], x)
    return suite_data._split(x.astype("int32"), y.astype("int32"), sizes)


def product_signs(seed, sizes=(1500, 1000, 2000), length=20):
    """Label: sign of sum_t a_t b_t over two Gaussian channels."""
    rng = np.random.default_rng(seed + 555)
    x = rng.normal(size=(sum(sizes), length, 2)).astype("float32")
    y = ((x[:, :, 0] * x[:, :, 1]).sum(1) > 0).astype("int32")
    return suite_data._split(x, y, sizes)


def majority_tokens(seed, sizes=(2000, 1000, 2000), vocab=6, length=12):
    """Uniform tokens over `vocab`; the label is the most frequent one
    (ties to the smallest)."""
    rng = np.random.default_rng(seed + 333)
    x = rng.integers(0, vocab, (sum(sizes), length))
    counts = (x[:, :, None] == np.arange(vocab)).sum(axis=1)
    y = counts.argmax(axis=1)
    return suite_data._split(x.astype("int32"), y.astype("int32"), sizes)


def lexicon_sentiment(seed, sizes=(2000, 1000, 2000), vocab=4000,
                      length=50, lexicon=300, power=1.1, noise=0.5):
    """Zipf(`power`) tokens over a shuffled vocabulary; the label is
    whether the document's sum of hidden polarities (`lexicon` words of
    frequency ranks 10-2000, weights +-[0.5, 2]) plus Gaussian noise is
    positive."""
    rng = np.random.default_rng(seed + 777)
    n = sum(sizes)
    frequency = 1.0 / np.arange(1, vocab + 1) ** power
    words = rng.permutation(vocab)
    x = words[rng.choice(vocab, size=(n, length),
                         p=frequency / frequency.sum())]
    ranks = rng.choice(np.arange(10, 2000), lexicon, replace=False)
    polarity = np.zeros(vocab)
    polarity[words[ranks]] = (rng.choice([-1.0, 1.0], lexicon)
                              * rng.uniform(0.5, 2.0, lexicon))
    score = polarity[x].sum(axis=1) + noise * rng.normal(size=n)
    return suite_data._split(x.astype("int32"),
                             (score > 0).astype("int32"), sizes)


def _mlp():
    return keras.Sequential([
        keras.Input((OMNIGLOT_SIZE, OMNIGLOT_SIZE, 1)),
        keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(OMNIGLOT_CLASSES)])


def _conv():
    return keras.Sequential([
        keras.Input((OMNIGLOT_SIZE, OMNIGLOT_SIZE, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.Flatten(), keras.layers.Dense(OMNIGLOT_CLASSES)])


def _tanh_mlp():
    return keras.Sequential([
        keras.Input((8,)), keras.layers.Dense(64, activation="tanh"),
        keras.layers.Dense(64, activation="tanh"), keras.layers.Dense(1)])


def _keyword_classifier():
    return keras.Sequential([
        keras.Input((None,), dtype="int32"), keras.layers.Embedding(800, 16),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])


def _lexicon_classifier():
    return keras.Sequential([
        keras.Input((None,), dtype="int32"),
        keras.layers.Embedding(4000, 24),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(24, activation="relu"), keras.layers.Dense(2)])


def _lstm():
    return keras.Sequential([keras.Input((20, 2)), keras.layers.LSTM(16),
                             keras.layers.Dense(2)])


def _attention(vocab=6, length=12, dim=24):
    tokens = keras.Input((length,), dtype="int32")
    x = keras.layers.Embedding(vocab, dim)(tokens)
    x = x + keras.layers.Embedding(length, dim)(keras.ops.arange(length))
    h = keras.layers.LayerNormalization()(x)
    x = x + keras.layers.MultiHeadAttention(4, dim // 4)(h, h)
    h = keras.layers.LayerNormalization()(x)
    x = x + keras.layers.Dense(dim)(keras.layers.Dense(
        48, activation="gelu")(h))
    x = keras.layers.GlobalAveragePooling1D()(
        keras.layers.LayerNormalization()(x))
    return keras.Model(tokens, keras.layers.Dense(vocab)(x))


_classifier = suite_workloads.classifier
DEV_WORKLOADS = {
    "omniglot_mlp": _classifier(omniglot_training_alphabets, _mlp, 32),
    "omniglot_conv": _classifier(omniglot_training_alphabets, _conv, 32),
    "tanh_regression": suite_workloads.Workload(
        sine_regression, _tanh_mlp, "mse", "mae", 32),
    "keywords": _classifier(keyword_tokens, _keyword_classifier, 32),
    "lstm_products": _classifier(product_signs, _lstm, 32),
    "attention_majority": _classifier(majority_tokens, _attention, 32),
    "lexicon_sentiment": _classifier(lexicon_sentiment,
                                     _lexicon_classifier, 32),
}

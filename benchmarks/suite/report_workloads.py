"""Report workloads: a third set, never used to choose anything.

Neither the held-out suite (`workloads.WORKLOADS`, where candidates are
compared) nor the development set (`dev_workloads.DEV_WORKLOADS`, where
they are chosen): before they were written down, nothing ran on them
but Adam(1e-3) smoke runs of at most 300 steps (checking that each
learns, and setting `conv1d_text`'s difficulty) and 3-step test fits of
the default `keras_meta.LearnedOptimizer()`, so the default and Adam
meet them unselected. Their numbers are reported as they come. Real
data where a machine has it offline (scikit-learn's bundled datasets),
synthetic data otherwise; batch size 32 throughout; real-valued features
standardized with TRAINING-split statistics only (digits: pixels / 16).

- `digits_mlp`: 64-128-10 ReLU MLP on scikit-learn's 8x8 digits (1,797
  images, pixels / 16, flattened); split by a permutation drawn from the
  seed into 1,000 / 297 / 500 (accuracy).
- `digits_cnn`: the same split as [8, 8, 1] images; conv-BN-ReLU (16, 32,
  no bias), max pooling, global average pooling, logits (accuracy).
- `breast_cancer_mlp`: 30-32-32-2 ReLU MLP on scikit-learn's breast
  cancer table (569 rows, standardized), 300 / 100 / 169 (accuracy).
- `diabetes_regression`: 10-64-64-1 ReLU MLP on scikit-learn's diabetes
  table (442 rows; features and target standardized), 250 / 92 / 100;
  MSE (MAE).
- `conv1d_text`: `Embedding(3000, 32)` + Conv1D(32, 3) + global max
  pooling on Zipf-distributed 64-token documents of 3 classes whose
  class shows only in the ORDER of hidden word pairs (8 per class; a bag
  of words cannot tell; sparse embedding gradients), 2,000 / 1,000 /
  2,000 (accuracy).
- `lstm_forecast`: LSTM(32) predicting the next value of a noisy sum of
  2-3 sinusoids from its past 32 values, 2,000 / 1,000 / 2,000; MSE
  (MAE).

The scikit-learn workloads raise `suite_data.DataUnavailable` (skipped,
as Omniglot is) where scikit-learn is not installed: `pip install -e
".[bench]"`.
"""

import functools

import keras
import numpy as np

from benchmarks.suite import data as suite_data
from benchmarks.suite import workloads as suite_workloads

DIGITS_SPLIT = (1000, 297, 500)
BREAST_CANCER_SPLIT = (300, 100, 169)
DIABETES_SPLIT = (250, 92, 100)
TEXT_VOCAB = 3000
TEXT_LENGTH = 64
TEXT_CLASSES = 3
FORECAST_WINDOW = 32


@functools.lru_cache(maxsize=None)
def _bundled(name):
    """(x, y) of scikit-learn's bundled dataset `load_<name>` (read from
    the installed package, no download).

    Raises:
        DataUnavailable: scikit-learn is not installed.
    """
    try:
        from sklearn import datasets
    except ImportError as e:
        raise suite_data.DataUnavailable(
            "scikit-learn is not installed (the report workloads' bundled "
            "datasets need it): pip install -e \".[bench]\"") from e
    return getattr(datasets, f"load_{name}")(return_X_y=True)


def _permuted_split(x, y, sizes, seed):
    """`suite_data._split` of the rows in an order drawn from `seed`."""
    if len(x) != sum(sizes):
        raise ValueError(f"{len(x)} rows, splits of {sizes}.")
    order = np.random.default_rng(seed).permutation(len(x))
    return suite_data._split(x[order], y[order], sizes)


def _moments(a, axis=0):
    """Mean and standard deviation (1 where 0) of the training rows."""
    sd = a.std(axis=axis)
    return a.mean(axis=axis), np.where(sd > 0, sd, 1.0)


def _rescaled(splits, x_moments, y_moments=None):
    """`splits` with x (and y, given `y_moments`) standardized by the
    given training moments, as float32."""
    parts = []
    for _, (x, y) in splits.items():
        x = ((x - x_moments[0]) / x_moments[1]).astype(np.float32)
        if y_moments is not None:
            y = ((y - y_moments[0]) / y_moments[1]).astype(np.float32)
        parts.append((x, y))
    return suite_data.Splits(*parts)


def _digits(seed):
    x, y = _bundled("digits")
    return _permuted_split((x / 16.0).astype(np.float32), y.astype(np.int32),
                           DIGITS_SPLIT, seed + 101)


def digits_flat(seed):
    """scikit-learn's 8x8 digits, pixels / 16, flattened to 64 floats;
    1,000 / 297 / 500 by a permutation drawn from the seed."""
    return _digits(seed)


def digits_images(seed):
    """The rows of `digits_flat` (same seed, same split) as [8, 8, 1]."""
    splits = _digits(seed)
    return suite_data.Splits(*((x.reshape(-1, 8, 8, 1), y)
                               for _, (x, y) in splits.items()))


def breast_cancer(seed):
    """scikit-learn's breast cancer table (30 features, 2 classes),
    standardized with the training rows' moments; 300 / 100 / 169."""
    x, y = _bundled("breast_cancer")
    splits = _permuted_split(x, y.astype(np.int32), BREAST_CANCER_SPLIT,
                             seed + 202)
    return _rescaled(splits, _moments(splits.train[0]))


def diabetes(seed):
    """scikit-learn's diabetes table (10 features, disease progression),
    features and target standardized with the training rows' moments;
    250 / 92 / 100; y is [N, 1]."""
    x, y = _bundled("diabetes")
    splits = _permuted_split(x, y[:, None], DIABETES_SPLIT, seed + 303)
    train_x, train_y = splits.train
    return _rescaled(splits, _moments(train_x), _moments(train_y))


def ordered_bigrams(seed, sizes=(2000, 1000, 2000), vocab=TEXT_VOCAB,
                    length=TEXT_LENGTH, classes=TEXT_CLASSES, pairs=8,
                    share=0.08, power=1.1, label_noise=0.05):
    """Zipf(`power`) token documents with hidden ordered word pairs.

    Tokens are Zipf over a shuffled vocabulary. Each class owns `pairs`
    ordered pairs "a then b" of distinct words of frequency ranks
    20-1000. Every pair of every class is planted with probability
    `share` at a random position of every document: adjacent in order in
    its own class's documents, reversed ("b then a") in the others'. So
    each word is as frequent in every class and only the order tells the
    class. A fraction `label_noise` of the labels are redrawn uniformly.
    Returns int32 token ids [N, length] and labels.

    With the defaults about 49% of a class's documents carry one of its
    pairs in order; telling the classes consistent with the pairs seen
    gives about 76% accuracy (chance 33%). `pairs` and `share` were set
    by Adam(1e-3) smoke runs of at most 300 steps only (seed 0: 69% test
    accuracy at 300 steps, 92% training), so that Adam learns it well
    above chance without saturating.
    """
    rng = np.random.default_rng(seed + 404)
    n = sum(sizes)
    frequency = 1.0 / np.arange(1, vocab + 1) ** power
    words = rng.permutation(vocab)
    x = words[rng.choice(vocab, size=(n, length),
                         p=frequency / frequency.sum())]
    hidden = words[rng.choice(np.arange(20, 1000), classes * pairs * 2,
                              replace=False)].reshape(classes, pairs, 2)
    y = rng.integers(0, classes, n)
    for c in range(classes):
        for a, b in hidden[c]:
            rows = np.flatnonzero(rng.random(n) < share)
            at = rng.integers(0, length - 1, len(rows))
            forward = y[rows] == c
            x[rows, at] = np.where(forward, a, b)
            x[rows, at + 1] = np.where(forward, b, a)
    noisy = rng.random(n) < label_noise
    y = np.where(noisy, rng.integers(0, classes, n), y)
    return suite_data._split(x.astype(np.int32), y.astype(np.int32), sizes)


def sinusoid_series(seed, n, length, noise=0.2):
    """[n, length] noisy sums of sinusoids (float64, not standardized).

    Each series sums 2 or 3 sinusoids (angular frequency uniform in
    [0.1, 1] per step, phase uniform, amplitude uniform in [0.5, 1.5])
    plus Gaussian noise of sd `noise`.
    """
    rng = np.random.default_rng(seed + 505)
    used = np.arange(3) < rng.integers(2, 4, n)[:, None]
    omega = rng.uniform(0.1, 1.0, (n, 3, 1))
    phase = rng.uniform(0.0, 2 * np.pi, (n, 3, 1))
    amplitude = rng.uniform(0.5, 1.5, (n, 3, 1)) * used[..., None]
    series = (amplitude * np.sin(omega * np.arange(length) + phase)
              ).sum(axis=1)
    return series + noise * rng.normal(size=series.shape)


def sinusoid_forecast(seed, sizes=(2000, 1000, 2000),
                      window=FORECAST_WINDOW, noise=0.2):
    """The next value of a `sinusoid_series` from its past `window`.

    x is [N, window, 1], y [N, 1] the value after. Both are standardized
    by the mean and sd of all training inputs (one scale for the series).
    """
    series = sinusoid_series(seed, sum(sizes), window + 1, noise)
    splits = suite_data._split(series[:, :window, None], series[:, window:],
                               sizes)
    moments = _moments(splits.train[0], axis=None)
    return _rescaled(splits, moments, moments)


def _digits_mlp():
    return keras.Sequential([
        keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10)])


def _digits_cnn():
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for filters in (16, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same",
                                use_bias=False)(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def _breast_cancer_mlp():
    return keras.Sequential([
        keras.Input((30,)), keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(32, activation="relu"), keras.layers.Dense(2)])


def _diabetes_mlp():
    return keras.Sequential([
        keras.Input((10,)), keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1)])


def _conv1d_text():
    return keras.Sequential([
        keras.Input((TEXT_LENGTH,), dtype="int32"),
        keras.layers.Embedding(TEXT_VOCAB, 32),
        keras.layers.Conv1D(32, 3, activation="relu"),
        keras.layers.GlobalMaxPooling1D(),
        keras.layers.Dense(TEXT_CLASSES)])


def _lstm_forecast():
    return keras.Sequential([keras.Input((FORECAST_WINDOW, 1)),
                             keras.layers.LSTM(32), keras.layers.Dense(1)])


_classifier = suite_workloads.classifier
REPORT_WORKLOADS = {
    "digits_mlp": _classifier(digits_flat, _digits_mlp, 32),
    "digits_cnn": _classifier(digits_images, _digits_cnn, 32),
    "breast_cancer_mlp": _classifier(breast_cancer, _breast_cancer_mlp, 32),
    "diabetes_regression": suite_workloads.Workload(
        diabetes, _diabetes_mlp, "mse", "mae", 32),
    "conv1d_text": _classifier(ordered_bigrams, _conv1d_text, 32),
    "lstm_forecast": suite_workloads.Workload(
        sinusoid_forecast, _lstm_forecast, "mse", "mae", 32),
}

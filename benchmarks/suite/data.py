"""Deterministic train/validation/test data of the suite's workloads.

Every generator returns a `Splits` of numpy arrays: a finite training set
(small enough that a model can overfit it within 5,000 steps), a
validation set (used only to choose baseline learning rates) and a test
set (the reported numbers). The synthetic generators draw all three splits
from one `numpy.random.default_rng(seed)` stream as disjoint samples, so
the same seed gives the same arrays. The Omniglot splits are fixed: the
held-out alphabets only, each character's 20 drawings divided by their
order in the archive.
"""

import dataclasses
import functools
import os

import numpy as np

from keras_meta.data import image_classes
from keras_meta.data.image_classes import (
    OMNIGLOT_HELD_OUT_ALPHABETS as OFFLINE_TEST_ALPHABETS)

OMNIGLOT_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))), "..", "shared", "data", "omniglot")
# Each character's 20 drawings, in archive order: train / validation / test.
OMNIGLOT_SPLIT = (12, 4, 4)


class DataUnavailable(Exception):
    """A workload's data is not on this machine (the workload is skipped)."""


@dataclasses.dataclass
class Splits:
    """(x, y) arrays of the training, validation and test sets."""

    train: tuple
    val: tuple
    test: tuple

    def items(self):
        return (("train", self.train), ("val", self.val),
                ("test", self.test))


def _split(x, y, sizes):
    """Consecutive slices of `sizes` (train, val, test) examples."""
    ends = np.cumsum(sizes)
    starts = ends - np.asarray(sizes)
    parts = [(x[a:b], y[a:b]) for a, b in zip(starts, ends)]
    return Splits(*parts)


@functools.lru_cache(maxsize=None)
def omniglot_held_out(directory=OMNIGLOT_DIR):
    """The held-out alphabets' drawings as float32 ink images in [0, 1].

    Returns `Splits` of ([N, 28, 28, 1] images, [N] character labels).
    Only `OFFLINE_TEST_ALPHABETS` are read into the splits: the learned
    optimizer's meta-training may use the other alphabets.

    Raises:
        DataUnavailable: the archives are not in `directory`.
    """
    if not os.path.exists(os.path.join(directory,
                                       "images_background_small2.zip")):
        raise DataUnavailable(f"Omniglot archives not found in {directory}")
    data = image_classes.load_omniglot(directory).subset(
        groups=OFFLINE_TEST_ALPHABETS)
    ink = 1.0 - data.images.astype(np.float32) / 255.0
    parts = {"train": [], "val": [], "test": []}
    for label in range(data.num_classes):
        rows = np.flatnonzero(data.labels == label)
        if len(rows) != sum(OMNIGLOT_SPLIT):
            raise ValueError(f"{data.class_names[label]} has {len(rows)} "
                             f"drawings, expected {sum(OMNIGLOT_SPLIT)}.")
        ends = np.cumsum(OMNIGLOT_SPLIT)
        for name, chunk in zip(parts, np.split(rows, ends[:-1])):
            parts[name].append(chunk)
    out = {}
    for name, chunks in parts.items():
        rows = np.concatenate(chunks)
        out[name] = (ink[rows], data.labels[rows].astype(np.int32))
    return Splits(**out)


def omniglot_classes(seed):
    """Held-out Omniglot character classification (the seed is unused)."""
    del seed
    return omniglot_held_out()


def omniglot_pixels(seed):
    """Held-out Omniglot drawings at 14x14 (2x2 mean), flattened; x == y."""
    del seed
    splits = omniglot_held_out()

    def pool(images):
        n = len(images)
        small = images.reshape(n, 14, 2, 14, 2).mean(axis=(2, 4))
        flat = small.reshape(n, 196).astype(np.float32)
        return flat, flat
    return Splits(*(pool(x) for _, (x, _) in splits.items()))


def topic_tokens(seed, sizes=(2000, 1000, 2000), vocab=2000, length=40,
                 classes=4, topic_words=40, topic_share=0.12):
    """Bag-of-words "documents": Zipf background tokens plus class topics.

    Each class owns `topic_words` random words of the vocabulary; a
    document of class c draws each token from c's words with probability
    `topic_share`, else from a Zipf background over the whole vocabulary,
    so short documents are ambiguous and rare topic words are seen only a
    few times in training. Returns int32 token ids [N, length] and labels.
    """
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    zipf = 1.0 / np.arange(1, vocab + 1)
    zipf /= zipf.sum()
    topics = np.stack([rng.choice(vocab, topic_words, replace=False)
                       for _ in range(classes)])
    y = rng.integers(0, classes, n)
    background = rng.choice(vocab, size=(n, length), p=zipf)
    on_topic = rng.random((n, length)) < topic_share
    topical = topics[y[:, None], rng.integers(0, topic_words, (n, length))]
    x = np.where(on_topic, topical, background)
    return _split(x.astype(np.int32), y.astype(np.int32), sizes)


def match_counts(seed, sizes=(3000, 1000, 2000), vocab=10, length=16,
                 classes=4):
    """How often the first token recurs in the rest of the sequence.

    Tokens are uniform over `vocab`; the label is the number of positions
    1..length-1 that equal position 0, capped at `classes - 1`. Attention
    from the first position to equal tokens solves it.
    """
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    x = rng.integers(0, vocab, (n, length))
    y = np.minimum((x[:, 1:] == x[:, :1]).sum(axis=1), classes - 1)
    return _split(x.astype(np.int32), y.astype(np.int32), sizes)


def noisy_frequencies(seed, sizes=(1500, 1000, 2000), length=40,
                      classes=5, noise=0.8):
    """Which of `classes` close frequencies a noisy sinusoid has.

    x: [N, length, 1] amplitude-jittered sinusoids with random phase plus
    Gaussian noise; y: the frequency's index.
    """
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    y = rng.integers(0, classes, n)
    omega = np.linspace(0.3, 0.9, classes)[y]
    phase = rng.uniform(0, 2 * np.pi, n)
    amp = rng.uniform(0.5, 1.5, n)
    t = np.arange(length)
    x = amp[:, None] * np.sin(omega[:, None] * t + phase[:, None])
    x += noise * rng.normal(size=x.shape)
    return _split(x[..., None].astype(np.float32), y.astype(np.int32), sizes)


def _shape_masks(kind, cy, cx, r, grid):
    """A boolean mask of shape `kind` centred at (cy, cx) of radius r."""
    yy, xx = grid
    dy, dx = yy - cy, xx - cx
    d = np.sqrt(dy ** 2 + dx ** 2)
    box = np.maximum(abs(dy), abs(dx))
    return [d <= r, (d <= r) & (d >= r - 1.2), box <= r,
            (box <= r) & (box >= r - 1), (abs(dy) <= 0.6) & (abs(dx) <= r),
            (abs(dx) <= 0.6) & (abs(dy) <= r),
            ((abs(dy) <= 0.6) | (abs(dx) <= 0.6)) & (box <= r),
            (abs(dy - dx) <= 0.8) & (box <= r)][kind]


def shapes(seed, sizes=(2000, 1000, 2000), size=16, classes=8, noise=0.5):
    """16x16 noisy images of one of 8 shapes at a random place and size.

    Shapes: disc, ring, square, square outline, horizontal bar, vertical
    bar, plus, diagonal; intensity varies, Gaussian pixel noise is added.
    Returns float32 [N, size, size, 1] images and labels.
    """
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    y = rng.integers(0, classes, n)
    x = noise * rng.normal(size=(n, size, size)).astype(np.float32)
    for i in range(n):
        r = rng.uniform(2.5, 5.0)
        cy, cx = rng.uniform(r, size - 1 - r, 2)
        x[i] += rng.uniform(0.7, 1.3) * _shape_masks(y[i], cy, cx, r, grid)
    return _split(x[..., None], y.astype(np.int32), sizes)


def smooth_regression(seed, sizes=(1000, 1000, 2000), dim=16, noise=0.1):
    """A smooth random function of 16 Gaussian inputs plus noise.

    y = sin(2 x.w1) + 0.5 cos(3 x.w2) + 0.3 (x.w1)(x.w3) + noise; the
    training set is small enough for an MLP to fit its noise.
    """
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    w1, w2, w3 = rng.normal(size=(3, dim)) / np.sqrt(dim)
    y = (np.sin(2.0 * x @ w1) + 0.5 * np.cos(3.0 * x @ w2)
         + 0.3 * (x @ w1) * (x @ w3) + noise * rng.normal(size=n))
    return _split(x, y[:, None].astype(np.float32), sizes)

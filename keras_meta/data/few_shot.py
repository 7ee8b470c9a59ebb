"""N-way K-shot classification episodes as an endless `tf.data.Dataset`."""

import numpy as np
import tensorflow as tf

from keras_meta import validation
from keras_meta.data.episode import seed_stream

from keras_meta.data.image_classes import ImageClasses
from keras_meta.data.image_classes import check_image_size
from keras_meta.data.image_classes import load_image_classes


def check_episode_settings(classes, ways, shots, queries,
                           meta_batch_size=1, rotations=False, shift=0,
                           distort=0.0, flips=False):
    """Refuses episode settings that cannot be sampled from `classes`.

    `episodes` calls it before it builds a stream; call it on every class
    split (training, validation, evaluation, each with its own shots and
    queries) before training starts, so that none fails later.

    Args:
        classes: an `ImageClasses`, or None to check the numbers only.
        ways, shots, queries, meta_batch_size, rotations, shift, distort,
            flips: as `episodes`.

    Raises:
        ValueError: a count that is not a positive int, `rotations` or
            `flips` not a bool, `shift` not an int >= 0 or not smaller
            than the images, `distort` not a number in [0, MAX_DISTORT],
            more ways than classes, fewer images in a class than shots +
            queries, or rotations of non-square images; the message says
            what was given and what was expected.
    """
    for name, value in (("ways", ways), ("shots", shots),
                        ("queries", queries),
                        ("meta_batch_size", meta_batch_size)):
        validation.check_positive_int(name, value)
    for name, value in (("rotations", rotations), ("flips", flips)):
        if not isinstance(value, bool):
            raise ValueError(f"`{name}` must be a bool; got {value!r}.")
    if isinstance(shift, bool) or not isinstance(
            shift, (int, np.integer)) or shift < 0:
        raise ValueError(
            f"`shift` must be an int >= 0 (pixels); got {shift!r}.")
    if isinstance(distort, bool) or not isinstance(
            distort, (int, float, np.integer, np.floating)) or not (
                0 <= distort <= MAX_DISTORT):
        raise ValueError(
            f"`distort` must be a number in [0, {MAX_DISTORT}] (1: Koch et "
            f"al.'s affine distortions); got {distort!r}.")
    if classes is None:
        return
    available = classes.num_classes * _variants(rotations, flips)
    if ways > available:
        made = " and ".join(name for name, on in (
            ("rotations", rotations), ("mirror images", flips)) if on)
        raise ValueError(
            f"ways={ways} needs at least {ways} classes; the source has "
            f"{available}{' with ' + made if made else ''}."
        )
    counts = classes.class_counts()
    needed = shots + queries
    if counts.min() < needed:
        short = np.flatnonzero(counts < needed)
        names = ", ".join(f"{classes.class_names[c]!r} ({counts[c]})"
                          for c in short[:3])
        raise ValueError(
            f"shots + queries = {needed} images per class are needed "
            f"(shots={shots}, queries={queries}), but {len(short)} classes "
            f"have fewer (the smallest has {counts.min()}; e.g. {names}). "
            "Lower shots/queries or drop those classes with "
            "ImageClasses.subset."
        )
    if rotations and classes.images.shape[1] != classes.images.shape[2]:
        raise ValueError(
            "rotations need square images; got "
            f"{classes.images.shape[1]}x{classes.images.shape[2]}."
        )
    if shift >= min(classes.images.shape[1:3]):
        raise ValueError(
            f"shift={shift} must be smaller than the images "
            f"({classes.images.shape[1]}x{classes.images.shape[2]}).")


def _variants(rotations, flips):
    """How many classes each source class makes: its 4 quarter turns with
    `rotations`, each also mirrored with `flips`."""
    return (4 if rotations else 1) * (2 if flips else 1)


# Per quarter turn k (counter-clockwise, as `tf.image.rot90`): where output
# pixel (row y, column x) of the turned image reads the source, as
# column = ax * x + ay * y + cx * (w - 1), row = bx * x + by * y + cy * (h - 1).
_QUARTER_TURNS = ((1, 0, 0, 0, 1, 0),      # k = 0
                  (0, -1, 1, 1, 0, 0),     # k = 1
                  (-1, 0, 1, 0, -1, 1),    # k = 2
                  (0, 1, 0, -1, 0, 1))     # k = 3


# `distort=1`: the ranges of Koch et al. (2015)'s affine distortions of
# Omniglot characters (their translation is `shift`).
MAX_DEGREES, MAX_SCALE, MAX_SHEAR = 10.0, 0.2, 0.3
# Beyond this a scale (0.8 at 1) can fall below 0.4 and the shears make
# maps that are nearly singular (1 - kx * ky near 0).
MAX_DISTORT = 3.0


def _random_distortions(seed, n, strength):
    """[n, 2, 2] random maps about the image centre, each
    rotation(theta) @ shear(kx, ky) @ scale(sx, sy) with theta, kx, ky, sx
    - 1, sy - 1 uniform within +-strength times (MAX_DEGREES, MAX_SHEAR,
    MAX_SCALE)."""
    u = tf.random.stateless_uniform([n, 5], seed, -strength, strength)
    theta = u[:, 0] * (MAX_DEGREES * np.pi / 180.0)
    kx, ky = u[:, 1] * MAX_SHEAR, u[:, 2] * MAX_SHEAR
    sx, sy = 1.0 + u[:, 3] * MAX_SCALE, 1.0 + u[:, 4] * MAX_SCALE
    cos, sin = tf.cos(theta), tf.sin(theta)
    rotation = tf.reshape(tf.stack([cos, -sin, sin, cos], 1), [n, 2, 2])
    shear = tf.reshape(tf.stack([tf.ones_like(kx), kx, ky,
                                 tf.ones_like(ky)], 1), [n, 2, 2])
    scale = tf.linalg.diag(tf.stack([sx, sy], 1))
    return rotation @ shear @ scale


def _move_each(images, quarter_turns, offsets, distortions=None,
               mirrors=None):
    """Mirrors image i left to right where mirrors[i], turns it by
    quarter_turns[i] * 90 degrees counter-clockwise
    (as `tf.image.rot90`), then translates it by offsets[i] = (down,
    right) pixels, repeating the edge rows and columns into the space it
    leaves (Omniglot's edges are background). Exact: every output pixel
    is a copy of one input pixel.

    One projective transform per image with nearest-pixel reads, so each
    output pixel is read once (turning and shifting in two steps made four
    turned copies of every image and two gathers).

    With `distortions`, output pixel p of image i first moves to
    c + distortions[i] @ (p - c), c the image centre and p = (column,
    row), and is then turned and shifted as above; the pixels are read
    bilinearly (no longer exact copies).

    Args:
        images: [n, h, w, c], square (h == w) where a turn is odd.
        quarter_turns: int32 [n] in 0..3.
        offsets: int32 [n, 2].
        distortions: None or float32 [n, 2, 2].
        mirrors: None or bool [n].
    """
    shape = tf.shape(images)
    last_col = tf.cast(shape[2] - 1, tf.float32)
    last_row = tf.cast(shape[1] - 1, tf.float32)
    ax, ay, cx, bx, by, cy = tf.unstack(
        tf.gather(tf.constant(_QUARTER_TURNS, tf.float32), quarter_turns),
        axis=1)
    down = tf.cast(offsets[:, 0], tf.float32)
    right = tf.cast(offsets[:, 1], tf.float32)
    # The turned image's pixel (y - down, x - right), clamped to the
    # image: clamping in the source's frame is the same, since a quarter
    # turn of a square maps each axis onto an axis.
    zero = tf.zeros_like(ax)
    a2 = cx * last_col - ax * right - ay * down
    b2 = cy * last_row - bx * right - by * down
    interpolation = "NEAREST"
    if distortions is not None:
        # Composed: source = T(c + D (p - c)) with T(q) = A q + t the turn
        # and shift above, so the map is A D and the offset T(c - D c).
        centre = tf.stack([last_col, last_row]) / 2.0
        turn = tf.reshape(tf.stack([ax, ay, bx, by], 1), [-1, 2, 2])
        linear = turn @ distortions
        moved = centre - tf.linalg.matvec(distortions, centre)
        extra = tf.linalg.matvec(turn, moved)
        ax, ay = linear[:, 0, 0], linear[:, 0, 1]
        bx, by = linear[:, 1, 0], linear[:, 1, 1]
        a2, b2 = a2 + extra[:, 0], b2 + extra[:, 1]
        interpolation = "BILINEAR"
    if mirrors is not None:
        # Mirrored source: the column read becomes last_col - column.
        sign = tf.where(mirrors, -1.0, 1.0)
        ax, ay = sign * ax, sign * ay
        a2 = tf.where(mirrors, last_col - a2, a2)
    transforms = tf.stack([ax, ay, a2, bx, by, b2, zero, zero], 1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape[1:3],
        fill_value=0.0, interpolation=interpolation, fill_mode="NEAREST")


def shifted(images, down, right):
    """`images` [n, h, w, c] moved `down` and `right` pixels (negative:
    up, left), the edge rows and columns repeated into the space left, as
    the training shift moves them; every output pixel is an input pixel.
    Two gathers, so that it also compiles with XLA."""
    shape = tf.shape(images)
    rows = tf.clip_by_value(tf.range(shape[1]) - down, 0, shape[1] - 1)
    cols = tf.clip_by_value(tf.range(shape[2]) - right, 0, shape[2] - 1)
    return tf.gather(tf.gather(images, rows, axis=1), cols, axis=2)


def _moved_batch(batch, chosen, seed, rotations, shift, distort, flips):
    """`batch` [B, ways, n, h, w, c] with each image turned and mirrored as
    its class (`chosen` [B, ways]) says, then shifted and distorted by its
    own random draw from `seed`: one projective read per image."""
    shape = tf.shape(batch)
    flat = tf.reshape(batch, tf.concat([[-1], shape[3:]], 0))
    n = tf.shape(flat)[0]
    variants = _variants(rotations, flips)

    def per_image(class_variant):
        return tf.reshape(tf.broadcast_to(class_variant[..., None],
                                          shape[:3]), [-1])

    turns = per_image(chosen % 4) if rotations else tf.zeros([n], tf.int32)
    mirrors = None
    if flips:
        mirrors = per_image(chosen % variants >= variants // 2)
    offsets = tf.zeros([n, 2], tf.int32)
    if shift:
        # Its own seed, folded from one already drawn, so that the streams
        # without a shift stay exactly what they were.
        offsets = tf.random.stateless_uniform(
            [n, 2], tf.random.experimental.stateless_fold_in(seed, 1),
            -shift, shift + 1, tf.int32)
    distortions = None
    if distort:
        distortions = _random_distortions(
            tf.random.experimental.stateless_fold_in(seed, 2), n,
            float(distort))
    return tf.reshape(
        _move_each(flat, turns, offsets, distortions, mirrors), shape)


def sample_episodes(classes, seed, ways, shots, queries, meta_batch_size,
                    rotations, shift=0, distort=0.0, flips=False):
    """Samples a batch of episodes, stateless and deterministic in `seed`.

    Args:
        classes: `(images, starts, counts, largest_count)` from
            `_class_tensors`.
        seed: int32 [2] stateless seed.
        ways, shots, queries, meta_batch_size, rotations, shift, distort,
            flips: as `episodes`.

    Returns:
        An episode dict (see `keras_meta.data.episode`).
    """
    images, starts, counts, width = classes
    num_base = int(starts.shape[0])
    variants = _variants(rotations, flips)
    num_classes = num_base * variants
    per_class = shots + queries
    s_class, s_example = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2))
    # Classes without replacement: the first `ways` of a random permutation,
    # whose order is also the random label order.
    chosen = tf.argsort(tf.random.stateless_uniform(
        [meta_batch_size, num_classes], s_class), axis=1)[:, :ways]
    base = chosen // variants
    count = tf.gather(counts, base)  # [B, ways]
    # Examples without replacement within each class: random keys, with the
    # slots past the class's count pushed to the end.
    keys = tf.random.stateless_uniform(
        [meta_batch_size, ways, width], s_example)
    keys = tf.where(tf.range(width) < count[..., None], keys, 2.0)
    pick = tf.argsort(keys, axis=-1)[..., :per_class]  # [B, ways, n]
    index = tf.gather(starts, base)[..., None] + pick
    batch = tf.gather(images, index)  # [B, ways, n, h, w, c]
    if rotations or shift or distort or flips:
        batch = _moved_batch(batch, chosen, s_example, rotations, shift,
                             distort, flips)
    labels = tf.broadcast_to(
        tf.range(ways, dtype=tf.int32)[None, :, None],
        [meta_batch_size, ways, per_class])

    def split(t, lo, hi):
        part = t[:, :, lo:hi]
        return tf.reshape(part, tf.concat(
            [[meta_batch_size, ways * (hi - lo)], tf.shape(part)[3:]], 0))

    return {
        "support_x": split(batch, 0, shots),
        "support_y": split(labels, 0, shots),
        "query_x": split(batch, shots, per_class),
        "query_y": split(labels, shots, per_class),
    }


def _class_tensors(classes):
    counts = classes.class_counts()
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (tf.constant(classes.images), tf.constant(starts, tf.int32),
            tf.constant(counts, tf.int32), int(counts.max()))


def episodes(source, ways=5, shots=1, queries=15, meta_batch_size=32,
             seed=None, split="train", data_dir=None, rotations=False,
             image_size=(28, 28), skip_batches=0, shift=0, distort=0.0,
             flips=False):
    """An endless dataset of N-way K-shot image-classification episodes.

    Classes are drawn without replacement within an episode and labelled
    0..ways-1 in a random order; each class gives `shots` support and
    `queries` query images, disjoint. With `rotations=True` each class of the
    source is four classes, rotated by 0, 90, 180 and 270 degrees (the MAML
    Omniglot protocol), so a task's class gets one random rotation. With
    `flips=True` each of those is also a class mirrored left to right
    (8 classes per source class with rotations, 2 without). With
    `shift=s` every image is moved by its own random offset of up to `s`
    pixels down or up and right or left (the edges repeated into the space
    left): an augmentation for training episodes. With `distort=d` every
    image is also rotated, sheared and scaled about its centre by its own
    random affine map, within d times Koch et al. (2015)'s ranges (+-10
    degrees, shear +-0.3, scale 0.8-1.2 per axis) and read bilinearly.

    Images are decoded and resized once and kept in memory as uint8; the
    episodes are sampled by stateless random ops in a parallel `map`, so a
    seed fixes the whole stream.

    Example:

    ```python
    omniglot = keras_meta.data.load_omniglot("../shared/data/omniglot")
    train = omniglot.subset(groups=omniglot.groups[:6])
    maml.fit(keras_meta.data.episodes(train, ways=5, shots=1, seed=0),
             steps_per_epoch=100)
    ```

    Args:
        source: a TFDS name ("omniglot", "mnist", ...), a path to Omniglot
            zips or folders, a `tf.data.Dataset` of (image, label), or an
            `ImageClasses` (e.g. one class split of a loaded source).
        ways: classes per episode (N).
        shots: support images per class (K).
        queries: query images per class.
        meta_batch_size: episodes per batch.
        seed: int for a reproducible stream, or None.
        split: TFDS split, for TFDS names.
        data_dir: TFDS data directory, for TFDS names.
        rotations: augment with 90-degree rotations as new classes.
        flips: augment with mirror images as new classes.
        image_size: (height, width) images are resized to when loaded.
        skip_batches: start the stream this many batches in (to resume a
            run exactly where it stopped).
        shift: the largest translation in pixels, per axis (0: none).
        distort: the strength of random affine distortions, 0 (none) to
            MAX_DISTORT.

    Returns:
        A `tf.data.Dataset` of episode dicts: `support_x` uint8
        [meta_batch_size, ways * shots, h, w, c], `support_y` int32
        [meta_batch_size, ways * shots], and `query_x`, `query_y` likewise
        with `ways * queries`. Examples are grouped by class.
    """
    check_episode_settings(None, ways, shots, queries, meta_batch_size,
                           rotations, shift, distort, flips)
    check_image_size(image_size)
    seeds = seed_stream(seed, skip_batches)
    classes = load_image_classes(source, split=split, data_dir=data_dir,
                                 image_size=image_size)
    check_episode_settings(classes, ways, shots, queries, meta_batch_size,
                           rotations, shift, distort, flips)
    tensors = _class_tensors(classes)
    return seeds.map(
        lambda s: sample_episodes(tensors, s, ways, shots, queries,
                                  meta_batch_size, rotations, shift,
                                  distort, flips),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).prefetch(tf.data.AUTOTUNE)

"""N-way K-shot episodes: structure, sampling rules, sources, Omniglot."""

import io
import os
import zipfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_meta
from keras_meta.data import ImageClasses
from keras_meta.data import few_shot


def marked_classes(num_classes=12, per_class=(6,), size=4, groups=None):
    """Images that say what they are: pixel (0,0) = 1 + class, (0,1) =
    101 + example index, the rest 0; sizes per class cycle `per_class`."""
    images, labels = [], []
    for c in range(num_classes):
        for i in range(per_class[c % len(per_class)]):
            image = np.zeros((size, size, 1), np.uint8)
            image[0, 0, 0], image[0, 1, 0] = 1 + c, 101 + i
            images.append(image)
            labels.append(c)
    return ImageClasses(np.stack(images), np.asarray(labels),
                        [f"c{c}" for c in range(num_classes)], groups)


def identify(image):
    """(class, example, quarter turns) of a marked image."""
    for k in range(4):
        upright = np.rot90(image[..., 0], -k)
        if upright[0, 0] and 1 <= upright[0, 0] <= 100 and upright[0, 1] > 100:
            return int(upright[0, 0]) - 1, int(upright[0, 1]) - 101, k
    raise AssertionError(f"unmarked image\n{image[..., 0]}")


def numpy_batches(ds, n):
    return [{k: v.numpy() for k, v in e.items()} for e in ds.take(n)]


def test_structure_labels_and_sampling_rules():
    ds = keras_meta.data.episodes(marked_classes(), ways=4, shots=2,
                                  queries=3, meta_batch_size=5, seed=0)
    keras_meta.data.validate_episode(ds.element_spec)
    for e in numpy_batches(ds, 3):
        assert e["support_x"].shape == (5, 8, 4, 4, 1)
        assert e["query_x"].shape == (5, 12, 4, 4, 1)
        assert e["support_y"].shape == (5, 8) and e["query_y"].shape == (5, 12)
        for t in range(5):
            sy, qy = e["support_y"][t], e["query_y"][t]
            assert sorted(set(sy)) == [0, 1, 2, 3]
            assert np.all(np.bincount(sy) == 2) and np.all(np.bincount(qy) == 3)
            support = [identify(x) for x in e["support_x"][t]]
            query = [identify(x) for x in e["query_x"][t]]
            label_of = {}
            for (c, i, _), y in zip(support + query, list(sy) + list(qy)):
                # One source class per label, one label per source class.
                assert label_of.setdefault(c, y) == y
            assert len(label_of) == 4
            examples = [(c, i) for c, i, _ in support + query]
            assert len(set(examples)) == len(examples)  # disjoint, no repeats


def test_label_order_is_random():
    ds = keras_meta.data.episodes(marked_classes(), ways=4, shots=1,
                                  queries=1, meta_batch_size=20, seed=1)
    (e,) = numpy_batches(ds, 1)
    classes_of_label_0 = {identify(e["support_x"][t][0])[0] for t in range(20)}
    assert len(classes_of_label_0) > 3


def test_seed_determinism_and_skip():
    def make(seed, skip=0):
        return keras_meta.data.episodes(marked_classes(), ways=3, shots=1,
                                        queries=2, meta_batch_size=4,
                                        seed=seed, skip_batches=skip)

    a, b, c = (numpy_batches(make(s), 3) for s in (7, 7, 8))
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(a[0]["support_x"], c[0]["support_x"])
    skipped = numpy_batches(make(7, skip=2), 1)[0]
    np.testing.assert_array_equal(skipped["query_x"], a[2]["query_x"])


def test_rotations_make_new_classes():
    ds = keras_meta.data.episodes(marked_classes(num_classes=3), ways=10,
                                  shots=1, queries=1, meta_batch_size=8,
                                  seed=2, rotations=True)
    seen = set()
    for e in numpy_batches(ds, 4):
        for t in range(8):
            ids = [identify(x) for x in e["support_x"][t]]
            classes = {(c, k) for c, _, k in ids}
            assert len(classes) == 10  # 10 of the 12 (class, rotation) pairs
            for x, y in zip(e["query_x"][t], e["query_y"][t]):
                c, _, k = identify(x)
                assert (c, k) == (ids[y][0], ids[y][2])  # same rotation
            seen |= classes
    assert {k for _, k in seen} == {0, 1, 2, 3}


def edge_shifted(image, down, right):
    """`image` moved down and right, its edge rows and columns repeated."""
    h, w = image.shape[:2]
    rows = np.clip(np.arange(h) - down, 0, h - 1)
    cols = np.clip(np.arange(w) - right, 0, w - 1)
    return image[rows][:, cols]


@pytest.mark.parametrize("height,width,turns,dtype", [
    (6, 6, range(4), np.uint8), (5, 7, [0, 2], np.float32)])
def test_move_each_turns_then_shifts_each_image_exactly(height, width, turns,
                                                        dtype):
    rng = np.random.RandomState(1)
    cases = [(k, d, r) for k in turns for d in (-3, -1, 0, 2)
             for r in (-2, 0, 1, 5)]
    images = (rng.rand(len(cases), height, width, 2) * 255).astype(dtype)
    moved = few_shot._move_each(
        tf.constant(images), tf.constant([k for k, _, _ in cases], tf.int32),
        tf.constant([(d, r) for _, d, r in cases], tf.int32)).numpy()
    for image, out, (k, d, r) in zip(images, moved, cases):
        np.testing.assert_array_equal(
            out, edge_shifted(np.rot90(image, k), d, r))


def test_move_each_mirrors_before_it_turns_and_shifts_exactly():
    rng = np.random.RandomState(3)
    cases = [(m, k, d, r) for m in (False, True) for k in range(4)
             for d in (-2, 1) for r in (0, 3)]
    images = rng.randint(0, 256, (len(cases), 6, 6, 1)).astype(np.uint8)
    moved = few_shot._move_each(
        tf.constant(images), tf.constant([k for _, k, _, _ in cases]),
        tf.constant([(d, r) for _, _, d, r in cases]),
        mirrors=tf.constant([m for m, _, _, _ in cases])).numpy()
    for image, out, (m, k, d, r) in zip(images, moved, cases):
        source = np.fliplr(image) if m else image
        np.testing.assert_array_equal(
            out, edge_shifted(np.rot90(source, k), d, r))


def test_shifted_moves_as_the_training_shift_does():
    images = tf.constant(np.random.RandomState(4).randint(
        0, 256, (3, 6, 5, 2)).astype(np.uint8))
    for down, right in [(-2, 1), (0, 0), (3, -4)]:
        expected = few_shot._move_each(
            images, tf.zeros([3], tf.int32),
            tf.constant([[down, right]] * 3, tf.int32))
        np.testing.assert_array_equal(
            few_shot.shifted(images, down, right), expected)


def identify_variant(image):
    """(class, example, quarter turns, mirrored) of a marked image, which
    was mirrored (left to right) before it was turned."""
    for k in range(4):
        upright = np.rot90(image[..., 0], -k)
        for mirrored in (False, True):
            source = np.fliplr(upright) if mirrored else upright
            if 1 <= source[0, 0] <= 100 and source[0, 1] > 100:
                return (int(source[0, 0]) - 1, int(source[0, 1]) - 101, k,
                        mirrored)
    raise AssertionError(f"unmarked image\n{image[..., 0]}")


def test_flips_make_mirror_images_new_classes():
    ds = keras_meta.data.episodes(marked_classes(num_classes=3), ways=20,
                                  shots=1, queries=1, meta_batch_size=8,
                                  seed=2, rotations=True, flips=True)
    seen = set()
    for e in numpy_batches(ds, 4):
        for t in range(8):
            support = [identify_variant(x) for x in e["support_x"][t]]
            variants = [(c, k, m) for c, _, k, m in support]
            assert len(set(variants)) == 20  # 20 of 3 x 4 x 2 classes
            for x, y in zip(e["query_x"][t], e["query_y"][t]):
                c, _, k, m = identify_variant(x)
                assert (c, k, m) == variants[y]
            seen |= set(variants)
    assert len(seen) == 24
    # Without rotations a class and its mirror image: 2 per source class.
    ds = keras_meta.data.episodes(marked_classes(num_classes=3), ways=6,
                                  shots=1, queries=1, meta_batch_size=4,
                                  seed=2, flips=True)
    for e in numpy_batches(ds, 2):
        for t in range(4):
            support = {identify_variant(x) for x in e["support_x"][t]}
            assert {(c, k, m) for c, _, k, m in support} == {
                (c, 0, m) for c in range(3) for m in (False, True)}


def test_move_each_distorts_in_the_output_frame_before_turn_and_shift():
    rng = np.random.RandomState(2)
    cases = [(k, d, r) for k in range(4) for d in (-2, 1) for r in (0, 3)]
    n = len(cases)
    images = tf.constant(rng.randint(0, 256, (n, 6, 6, 1)).astype(np.uint8))
    turns = tf.constant([k for k, _, _ in cases], tf.int32)
    offsets = tf.constant([(d, r) for _, d, r in cases], tf.int32)
    plain = few_shot._move_each(images, turns, offsets).numpy()
    # The identity map reads the same pixels (bilinearly, at whole
    # coordinates); a quarter-turn map turns the moved image once more.
    identity = few_shot._move_each(images, turns, offsets,
                                   tf.eye(2, batch_shape=[n])).numpy()
    np.testing.assert_array_equal(identity, plain)
    turn = tf.broadcast_to(tf.constant([[0.0, -1.0], [1.0, 0.0]]), [n, 2, 2])
    turned = few_shot._move_each(images, turns, offsets, turn).numpy()
    for out, moved in zip(turned, plain):
        np.testing.assert_array_equal(out, np.rot90(moved, 1))


def test_distortions_stay_within_their_ranges():
    maps = few_shot._random_distortions(tf.constant([4, 2]), 4000,
                                        0.5).numpy()
    # rotation(theta) @ shear @ scale: the determinant is sx * sy * (1 -
    # kx * ky), within (0.9 * 0.9 * (1 - 0.15**2), 1.1**2 * (1 + 0.15**2)).
    det = np.linalg.det(maps)
    assert 0.79 < det.min() < 0.83 and 1.20 < det.max() < 1.24
    assert np.abs(maps.mean(0) - np.eye(2)).max() < 0.02
    assert not np.allclose(maps[0], maps[1])


def test_shift_translates_each_image_and_keeps_the_sampling():
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (60, 8, 8, 1)).astype(np.uint8)
    data = ImageClasses(images, np.repeat(np.arange(10), 6),
                        [f"c{c}" for c in range(10)])

    def make(shift, distort=0.0):
        return numpy_batches(keras_meta.data.episodes(
            data, ways=5, shots=1, queries=2, meta_batch_size=4, seed=5,
            rotations=True, shift=shift, distort=distort), 2)

    plain, shifted, again = make(0), make(2), make(2)
    # Distortions keep the episodes' labels and change (almost) every image.
    for s, d in zip(shifted, make(2, 0.5)):
        np.testing.assert_array_equal(s["query_y"], d["query_y"])
        same = [np.array_equal(a, b) for a, b in zip(
            s["query_x"].reshape((-1, 64)), d["query_x"].reshape((-1, 64)))]
        assert sum(same) <= 2, same
    offsets = []
    for p, s, a in zip(plain, shifted, again):
        for key in ("support_y", "query_y"):
            np.testing.assert_array_equal(p[key], s[key])
        for key in ("support_x", "query_x"):
            np.testing.assert_array_equal(s[key], a[key])  # deterministic
            for x, y in zip(p[key].reshape((-1, 8, 8, 1)),
                            s[key].reshape((-1, 8, 8, 1))):
                # The same image (same class, example and rotation), moved
                # by one offset within +-2 pixels per axis.
                found = [(d, r) for d in range(-2, 3) for r in range(-2, 3)
                         if np.array_equal(edge_shifted(x, d, r), y)]
                assert len(found) == 1, found
                offsets.append(found[0])
    # Every image draws its own offset: all 25 of them appear in 96 images.
    assert len(set(offsets)) == 25


def test_class_splits_keep_held_out_classes_out():
    groups = [f"g{c % 4}" for c in range(12)]
    data = marked_classes(groups=groups)
    train = data.subset(groups=["g0", "g1", "g2"])
    test = data.subset(groups=["g3"])
    assert train.num_classes == 9 and test.num_classes == 3
    held_out = {int(n[1:]) for n in test.class_names}
    ds = keras_meta.data.episodes(train, ways=5, shots=1, queries=2,
                                  meta_batch_size=16, seed=3, rotations=True)
    for e in numpy_batches(ds, 5):
        for images in (e["support_x"], e["query_x"]):
            for x in images.reshape((-1,) + images.shape[2:]):
                assert identify(x)[0] not in held_out


@pytest.mark.parametrize("kwargs, message", [
    (dict(ways=13), "ways=13 needs at least 13 classes; the source has 12"),
    (dict(ways=49, rotations=True), "has 48 with rotations"),
    (dict(ways=97, rotations=True, flips=True),
     "has 96 with rotations and mirror images"),
    (dict(flips=1), "`flips` must be a bool; got 1"),
    (dict(shots=5, queries=2), "7 images per class are needed"),
    (dict(queries=0), "`queries` must be an int >= 1; got 0"),
    (dict(skip_batches=-1), "`skip_batches` must be an int >= 0"),
    (dict(shift=-1), r"`shift` must be an int >= 0 \(pixels\); got -1"),
    (dict(shift=1.5), r"`shift` must be an int >= 0 \(pixels\); got 1.5"),
    (dict(shift=4, queries=2), r"shift=4 must be smaller than the images \(4x4\)"),
    (dict(distort=-0.5), r"`distort` must be a number in \[0, 3.0\] .*got -0.5"),
    (dict(distort=3.5), r"`distort` must be a number in \[0, 3.0\] .*got 3.5"),
    (dict(distort=True), r"`distort` must be a number in \[0, 3.0\] .*got True"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_meta.data.episodes(marked_classes(), **kwargs)


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="Omniglot data not found"):
        keras_meta.data.episodes(str(tmp_path / "missing") + os.sep)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="No Omniglot PNG images"):
        keras_meta.data.load_omniglot(str(empty))
    bad = tmp_path / "images_background.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not a readable zip"):
        keras_meta.data.load_omniglot(str(tmp_path))
    with pytest.raises(ValueError, match="`source` must be"):
        keras_meta.data.episodes(42)


def _png(value, size=105):
    image = np.full((size, size, 1), 255, np.uint8)
    image[10:40, 20 + value:50 + value] = 0
    return tf.io.encode_png(image).numpy()


def write_omniglot_zip(path, alphabets=2, characters=3, drawings=4):
    with zipfile.ZipFile(path, "w") as z:
        for a in range(alphabets):
            for c in range(characters):
                for d in range(drawings):
                    z.writestr(
                        f"images_background/Alpha{a}/character{c + 1:02d}/"
                        f"{a}{c}_{d:02d}.png", _png(a * 10 + c * 3 + d))


def test_zip_tfds_and_dataset_sources_give_the_same_structure(tmp_path):
    write_omniglot_zip(tmp_path / "images_background.zip")
    from_zip = keras_meta.data.load_omniglot(str(tmp_path))
    assert from_zip.num_classes == 6 and from_zip.groups == ["Alpha0",
                                                              "Alpha1"]
    assert from_zip.images.shape == (24, 28, 28, 1)

    # TFDS's omniglot gives 3-channel 105x105 images with label and alphabet.
    raw = [tf.io.decode_png(_png(a * 10 + c * 3 + d), channels=1).numpy()
           for a in range(2) for c in range(3) for d in range(4)]
    labels = [a * 3 + c for a in range(2) for c in range(3) for _ in range(4)]
    alphabets = [a for a in range(2) for _ in range(12)]

    def as_dataset(self, *args, **kwargs):
        return tf.data.Dataset.from_tensor_slices({
            "image": np.repeat(np.stack(raw), 3, axis=-1),
            "label": np.asarray(labels, np.int64),
            "alphabet": np.asarray(alphabets, np.int64),
            "alphabet_char_id": np.zeros(24, np.int64),
        })

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        from_tfds = keras_meta.data.load_tfds("omniglot", split="train",
                                              image_size=(28, 28))
    np.testing.assert_array_equal(from_tfds.images, from_zip.images)
    np.testing.assert_array_equal(from_tfds.labels, from_zip.labels)
    assert len(from_tfds.groups) == 2

    from_ds = keras_meta.data.load_image_classes(
        tf.data.Dataset.from_tensor_slices((np.stack(raw), labels)))
    np.testing.assert_array_equal(from_ds.images, from_zip.images)

    specs = [keras_meta.data.episodes(source, ways=3, shots=1, queries=2,
                                      meta_batch_size=2, seed=0).element_spec
             for source in (from_zip, from_tfds, from_ds)]
    assert specs[0] == specs[1] == specs[2]


def test_unknown_tfds_name():
    with pytest.raises(ValueError, match="Unknown TFDS dataset 'no_such_ds'"):
        keras_meta.data.load_tfds("no_such_ds")


def test_offline_omniglot_archives(omniglot_dir):
    data = keras_meta.data.load_omniglot(omniglot_dir)
    # Greek and Latin are in both archives and are read once.
    assert data.num_classes == 242 and len(data.groups) == 8
    assert data.images.shape == (4840, 28, 28, 1)
    assert np.all(data.class_counts() == 20)
    # White background, dark ink, as in the files.
    assert data.images.mean() > 200 and data.images.min() < 50

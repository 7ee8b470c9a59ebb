"""Image sources refuse or fix what would be silently wrong: float and
integer ranges, images of other sizes, files that are not images, episode
settings the data cannot serve. The Omniglot files decode as they always
did."""

import hashlib
import re
import zipfile

import numpy as np
import pytest
import tensorflow as tf

import keras_meta
from keras_meta.data import ImageClasses
from keras_meta.data import image_classes
from keras_meta.data.image_decoding import to_uint8

# sha256 of the 4840 raw 105x105 uint8 images of ../shared/data/omniglot in
# loader order, decoded by the code before issue 19
# (tf.io.decode_png(data, channels=1)).
OMNIGLOT_RAW_SHA256 = (
    "da586a214af11fce32005d23ff7c62b7aced10ab9fd9431ba53bfff2faf5f735")


def drawings(n=6, size=10):
    """n distinct uint8 drawings [n, size, size, 1], white background."""
    images = np.full((n, size, size, 1), 255, np.uint8)
    for i in range(n):
        images[i, 2:8, i % size] = 0
        images[i, i % size, 1:9] = 60 + 20 * i
    return images


def png(image):
    return tf.io.encode_png(image).numpy()


def test_omniglot_files_decode_as_before(omniglot_dir):
    digest, raw = hashlib.sha256(), []
    for _, _, where, data in image_classes._omniglot_files(omniglot_dir):
        image = keras_meta.data.decode_image(data, name=where)
        digest.update(image.tobytes())
        raw.append(tf.io.decode_png(data, channels=1).numpy())
    assert digest.hexdigest() == OMNIGLOT_RAW_SHA256
    # The loader's output is the old path's: stack, one resize of all.
    loaded = keras_meta.data.load_omniglot(omniglot_dir)
    old = image_classes._resize_uint8(np.stack(raw), (28, 28))
    np.testing.assert_array_equal(loaded.images, old)


def write_zip(path, files):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return str(path)


def character_files(images, prefix="images_background/Alpha/character01"):
    return {f"{prefix}/{i:02d}.png": png(x) for i, x in enumerate(images)}


def test_an_image_of_another_size_is_resized_or_named(tmp_path):
    images = drawings(5, size=20)
    files = character_files(images)
    odd = "images_background/Alpha/character01/99.png"
    files[odd] = png(drawings(1, size=30)[0])
    path = write_zip(tmp_path / "images_background.zip", files)
    with pytest.raises(ValueError, match=re.escape(
            f"{path}:{odd} is 30x30; the other images are 20x20. Pass "
            "image_size=(height, width)")):
        keras_meta.data.load_omniglot(path, image_size=None)
    data = keras_meta.data.load_omniglot(path, image_size=(10, 10))
    assert data.images.shape == (6, 10, 10, 1)
    resize = image_classes._resize_uint8
    np.testing.assert_array_equal(data.images[:5], resize(images, (10, 10)))
    np.testing.assert_array_equal(
        data.images[5:], resize(drawings(1, size=30), (10, 10)))


def test_unsized_load_keeps_the_size(tmp_path):
    images = drawings(4, size=12)
    path = write_zip(tmp_path / "images_background.zip",
                     character_files(images))
    data = keras_meta.data.load_omniglot(path, image_size=None)
    np.testing.assert_array_equal(data.images, images)


@pytest.mark.parametrize("bad", [b"", b"GIF89a broken", b"\x89PNG\r\n\x1a\n"])
def test_a_file_that_is_not_an_image_is_named(tmp_path, bad):
    files = character_files(drawings(3))
    member = "images_background/Alpha/character01/bad.png"
    files[member] = bad
    path = write_zip(tmp_path / "images_background.zip", files)
    with pytest.raises(ValueError, match=re.escape(
            f"{path}:{member} is not a readable image")):
        keras_meta.data.load_omniglot(path)
    # The same in an extracted folder, named by its path.
    folder = tmp_path / "extracted" / "Alpha" / "character01"
    folder.mkdir(parents=True)
    (folder / "ok.png").write_bytes(png(drawings(1)[0]))
    (folder / "bad.jpg").write_bytes(bad)
    (folder / "notes.txt").write_text("not an image, not read")
    with pytest.raises(ValueError, match=re.escape(
            f"{folder / 'bad.jpg'} is not a readable image")):
        keras_meta.data.load_omniglot(str(tmp_path / "extracted"))


def test_folders_of_mixed_encodings_give_the_grayscale_arrays(tmp_path):
    images = drawings(3)
    ink = 255 - images
    folder = tmp_path / "Alpha" / "character01"
    folder.mkdir(parents=True)
    (folder / "0.png").write_bytes(png(images[0]))
    rgba = np.concatenate([np.zeros_like(np.repeat(ink[1], 3, -1)), ink[1]],
                          -1)
    (folder / "1.png").write_bytes(png(rgba))
    (folder / "2.png").write_bytes(png(images[2].astype(np.uint16) * 257))
    data = keras_meta.data.load_omniglot(str(tmp_path), image_size=None)
    np.testing.assert_array_equal(data.images, images)


def dataset(images, labels=None):
    labels = np.arange(len(images)) % 3 if labels is None else labels
    return tf.data.Dataset.from_tensor_slices((images, labels))


@pytest.mark.parametrize("convert", [
    lambda x: x.astype(np.float32) / 255,
    lambda x: x.astype(np.float64),
    lambda x: x.astype(np.float16) / np.float16(255),
    lambda x: x.astype(np.uint16),
    lambda x: x.astype(np.int64),
], ids=["float01", "float255", "float16_01", "uint16_8bit", "int64"])
def test_float_and_integer_images_become_the_same_uint8(convert):
    images = drawings(6)
    for source in (dataset(convert(images)),
                   ImageClasses(convert(images), np.arange(6) % 3,
                                ["a", "b", "c"])):
        data = keras_meta.data.load_image_classes(source, image_size=None)
        order = np.argsort(np.arange(6) % 3, kind="stable")
        np.testing.assert_array_equal(data.images, images[order])


@pytest.mark.parametrize("images, message", [
    (drawings(3).astype(np.float32) / 127.5 - 1,
     "(float32) hold values in [-1, 1]; expected [0, 1] or [0, 255]."),
    (drawings(3).astype(np.float32) * 2,
     "(float32) hold values in [0, 510]; expected [0, 1] or [0, 255]."),
    (drawings(3).astype(np.uint16) * 257,
     "(uint16) hold values in [0, 65535]; expected [0, 255] (16-bit images: "
     "convert with tf.image.convert_image_dtype(images, tf.uint8) first)."),
    (drawings(3).astype(np.int32) - 1,
     "(int32) hold values in [-1, 254]; expected [0, 255]"),
    (np.full((3, 4, 4, 1), np.nan, np.float32),
     "hold NaN or infinite values (float32)."),
    (np.ones((3, 4, 4, 1), bool),
     "have dtype bool; expected uint8 in [0, 255]"),
])
def test_images_out_of_range_are_refused(images, message):
    labels = np.arange(3)
    with pytest.raises(ValueError, match="^The dataset's images " + re.escape(
            message)):
        keras_meta.data.from_dataset(dataset(images, labels))
    with pytest.raises(ValueError, match="^ImageClasses images " + re.escape(
            message)):
        ImageClasses(images, labels, ["a", "b", "c"])


def test_to_uint8_rounds_and_judges_the_range_over_all_images():
    # One image in [0, 1] beside one reaching 255: the whole set is [0, 255].
    out = to_uint8([np.asarray([0.4, 0.6]), np.asarray([1.5, 255.0])])
    np.testing.assert_array_equal(out[0], [0, 1])
    np.testing.assert_array_equal(out[1], [2, 255])
    np.testing.assert_array_equal(to_uint8(np.asarray([0.5 / 255, 1.0])),
                                  [0, 255])


def generated(shapes):
    def gen():
        for i, shape in enumerate(shapes):
            yield np.full(shape, 255, np.uint8), i % 2

    return tf.data.Dataset.from_generator(gen, output_signature=(
        tf.TensorSpec((None, None, None), tf.uint8),
        tf.TensorSpec((), tf.int64)))


def test_dataset_images_of_other_shapes_are_named_or_resized():
    shapes = [(8, 8, 1)] * 3 + [(6, 9, 1)]
    with pytest.raises(ValueError, match=re.escape(
            "Dataset element 3 is 6x9; the other images are 8x8.")):
        keras_meta.data.from_dataset(generated(shapes))
    data = keras_meta.data.from_dataset(generated(shapes), image_size=(4, 4))
    assert data.images.shape == (4, 4, 4, 1) and np.all(data.images == 255)
    with pytest.raises(ValueError, match=re.escape(
            "Dataset element 1 has 3 channels; the other images have 1.")):
        keras_meta.data.from_dataset(generated([(8, 8, 1), (8, 8, 3),
                                                (8, 8, 1)]))


@pytest.mark.parametrize("ds, message", [
    (tf.data.Dataset.from_tensor_slices(np.zeros((2, 4, 4, 1), np.uint8)),
     "Dataset element 0: expected (image, label) or a dict with 'image' "
     "and 'label'; got ndarray."),
    (tf.data.Dataset.from_tensor_slices({"img": np.zeros((2, 4, 4))}),
     "got ['img']."),
    (dataset(np.zeros((2, 4, 4, 1), np.uint8), np.asarray([0.5, 1.0])),
     "Dataset element 0: the label must be a scalar int; got float64 of "
     "shape ()."),
    (dataset(np.zeros((2, 4), np.uint8), np.asarray([0, 1])),
     "Dataset element 0: the image must have shape [height, width] or "
     "[height, width, channels]; got (4,)."),
])
def test_malformed_dataset_elements_are_named(ds, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        keras_meta.data.from_dataset(ds)


@pytest.mark.parametrize("kwargs, message", [
    (dict(labels=np.asarray([0, 1, 3])),
     "labels must be ints in [0, 3) (one per class name); got int64 in "
     "[0, 3]."),
    (dict(labels=np.asarray([0.0, 1.0, 2.0])), "got float64 in [0.0, 2.0]"),
    (dict(labels=np.asarray([0, 1])), "3 images but labels of shape (2,)"),
    (dict(class_groups=["g"]), "1 class groups for 3 classes"),
    (dict(images=np.zeros((3, 4), np.uint8)),
     "must have shape [N, height, width, channels] (or [N, height, width]);"
     " got (3, 4)."),
])
def test_image_classes_refuse_inconsistent_arrays(kwargs, message):
    args = dict(images=drawings(3), labels=np.arange(3),
                class_names=["a", "b", "c"])
    args.update(kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        ImageClasses(**args)


def classes(counts=(6, 6, 4)):
    images = np.zeros((sum(counts), 4, 4, 1), np.uint8)
    labels = np.repeat(np.arange(len(counts)), counts)
    return ImageClasses(images, labels, [f"c{i}" for i in range(len(counts))])


@pytest.mark.parametrize("kwargs, message", [
    (dict(ways=4),
     "ways=4 needs at least 4 classes; the source has 3."),
    (dict(ways=3, shots=2, queries=3),
     "shots + queries = 5 images per class are needed (shots=2, "
     "queries=3), but 1 classes have fewer (the smallest has 4; e.g. 'c2' "
     "(4))."),
    (dict(meta_batch_size=0),
     "`meta_batch_size` must be an int >= 1; got 0."),
    (dict(shots=0), "`shots` must be an int >= 1; got 0."),
    (dict(ways=2.0), "`ways` must be an int >= 1; got 2.0."),
    (dict(rotations="yes"), "`rotations` must be a bool; got 'yes'."),
    (dict(image_size=(0, 28)),
     "`image_size` must be (height, width) of positive ints, or None to "
     "keep the images' size; got (0, 28)."),
])
def test_episode_settings_refused_when_the_dataset_is_made(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        keras_meta.data.episodes(classes(), **kwargs)


def test_check_episode_settings_alone():
    keras_meta.data.check_episode_settings(classes(), 3, 1, 3)
    with pytest.raises(ValueError, match=re.escape(
            "ways=5 needs at least 5 classes; the source has 3.")):
        keras_meta.data.check_episode_settings(classes(), 5, 1, 1)
    # With rotations each class is four.
    keras_meta.data.check_episode_settings(classes(), 12, 1, 1, 2, True)
    with pytest.raises(ValueError, match="rotations need square images"):
        keras_meta.data.check_episode_settings(
            ImageClasses(np.zeros((4, 4, 6, 1), np.uint8),
                         np.asarray([0, 0, 1, 1]), ["a", "b"]),
            2, 1, 1, 1, rotations=True)

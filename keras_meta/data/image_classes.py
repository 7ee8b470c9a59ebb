"""Labelled images held in memory by class, from TFDS, Omniglot files or tf.data.

Few-shot episodes sample classes, then examples within a class. Every
source is decoded and resized once into an `ImageClasses` (uint8 images,
sorted by class, with an optional group per class such as the Omniglot
alphabet), which `keras_meta.data.episodes` samples from.
"""

import collections
import dataclasses
import glob
import os
import zipfile

import keras
import numpy as np
import tensorflow as tf

from keras_meta.data.image_decoding import decode_image
from keras_meta.data.image_decoding import to_uint8

OMNIGLOT_IMAGE_SIZE = (28, 28)
# The two alphabets of the offline Omniglot subset that every meta-learner
# here leaves out of (meta-)training, for evaluation.
OMNIGLOT_HELD_OUT_ALPHABETS = ("Sanskrit", "Tagalog")
# File names read as images from Omniglot-style zips and folders.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@keras.saving.register_keras_serializable(package="keras_meta")
class ResizeImages(keras.layers.Resizing):
    """`keras.layers.Resizing` that passes images already at its size through.

    Antialiased bilinear is an area-like downscale (105 -> 28 keeps the
    strokes), but its op has no XLA kernel. Episodes are cached at the
    model's size, so inside compiled training steps the static shape already
    matches and no resize op is emitted; raw images (105x105 from
    `tf.io.decode_png`) are resized exactly as the cache was.
    """

    def call(self, inputs):
        shape = tuple(inputs.shape)
        if len(shape) == 4 and shape[1:3] == (self.height, self.width):
            return inputs
        # Quantize to 8-bit intensities as the uint8 cache is, so raw and
        # cached images reach the network as the same numbers.
        resized = super().call(inputs)
        return keras.ops.round(keras.ops.clip(resized, 0, 255))


def resizing_layer(image_size):
    """The one resize used by the data cache and inside the models."""
    height, width = image_size
    return ResizeImages(
        height, width, interpolation="bilinear", antialias=True,
        name="resize",
    )


@dataclasses.dataclass
class ImageClasses:
    """Images grouped by class.

    Attributes:
        images: uint8 array [N, height, width, channels], sorted by label.
        labels: int32 array [N], class indices 0..num_classes-1.
        class_names: a name per class.
        class_groups: a group per class (the Omniglot alphabet), or None.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list
    class_groups: list = None

    def __post_init__(self):
        images = np.asarray(self.images)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4:
            raise ValueError(
                "ImageClasses images must have shape [N, height, width, "
                f"channels] (or [N, height, width]); got {images.shape}."
            )
        labels = np.asarray(self.labels)
        if len(images) != len(labels) or labels.ndim != 1:
            raise ValueError(
                f"{len(images)} images but labels of shape {labels.shape}; "
                "expected one label per image."
            )
        if labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0
                            or labels.max() >= len(self.class_names)):
            raise ValueError(
                f"ImageClasses labels must be ints in [0, "
                f"{len(self.class_names)}) (one per class name); got "
                f"{labels.dtype} in [{labels.min()}, {labels.max()}]."
            )
        if (self.class_groups is not None
                and len(self.class_groups) != len(self.class_names)):
            raise ValueError(
                f"{len(self.class_groups)} class groups for "
                f"{len(self.class_names)} classes; expected one per class."
            )
        images = to_uint8(images, "ImageClasses images")
        order = np.argsort(labels, kind="stable")
        self.images = np.ascontiguousarray(images[order])
        self.labels = np.asarray(labels[order], dtype=np.int32)

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def groups(self):
        """The distinct groups, sorted (empty when there are none)."""
        return sorted(set(self.class_groups or []))

    def class_counts(self):
        return np.bincount(self.labels, minlength=self.num_classes)

    def subset(self, classes=None, groups=None):
        """The classes listed (by index) or in the groups listed, relabelled.

        Raises:
            ValueError: a group that does not exist, or nothing selected.
        """
        keep = np.zeros(self.num_classes, bool)
        if classes is not None:
            keep[np.asarray(list(classes), dtype=int)] = True
        if groups is not None:
            if self.class_groups is None:
                raise ValueError("These classes have no groups to select by.")
            unknown = sorted(set(groups) - set(self.class_groups))
            if unknown:
                raise ValueError(
                    f"Unknown groups {unknown}; known: {self.groups}."
                )
            keep |= np.isin(np.asarray(self.class_groups), list(groups))
        if not keep.any():
            raise ValueError("The selection holds no class.")
        new_index = np.cumsum(keep) - 1
        rows = keep[self.labels]
        return ImageClasses(
            images=self.images[rows],
            labels=new_index[self.labels[rows]].astype(np.int32),
            class_names=[n for n, k in zip(self.class_names, keep) if k],
            class_groups=None if self.class_groups is None else [
                g for g, k in zip(self.class_groups, keep) if k],
        )


def _resize_uint8(images, image_size, batch=512):
    layer = resizing_layer(image_size)
    out = [np.asarray(layer(images[i:i + batch]))
           for i in range(0, len(images), batch)]
    return np.concatenate(out).astype(np.uint8)


def check_image_size(image_size):
    """`image_size` as a (height, width) tuple of positive ints, or None.

    Raises:
        ValueError: anything else; the message gives what was passed.
    """
    if image_size is None:
        return None
    if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
            or not all(isinstance(v, (int, np.integer))
                       and not isinstance(v, bool) and v > 0
                       for v in image_size)):
        raise ValueError(
            "`image_size` must be (height, width) of positive ints, or None "
            f"to keep the images' size; got {image_size!r}."
        )
    return tuple(int(v) for v in image_size)


def stack_images(images, names, image_size=None):
    """Stacks uint8 [h, w, c] images into [N, h, w, c].

    Args:
        images: a list of uint8 [h, w, c] arrays.
        names: a name per image (file, dataset element) for error messages.
        image_size: (height, width) every image is resized to (each size
            with the one resize layer), or None: then all must have one size.

    Raises:
        ValueError: an empty image, channel counts that differ, or sizes
            that differ with `image_size=None`; the message names the first
            image that differs from the most common shape.
    """
    image_size = check_image_size(image_size)
    shapes = collections.Counter(x.shape for x in images)
    common = shapes.most_common(1)[0][0]
    for x, name in zip(images, names):
        if min(x.shape) == 0:
            raise ValueError(f"{name} is an empty image (shape {x.shape}).")
        if x.shape[-1] != common[-1]:
            raise ValueError(
                f"{name} has {x.shape[-1]} channels; the other images have "
                f"{common[-1]}."
            )
        if image_size is None and x.shape != common:
            raise ValueError(
                f"{name} is {x.shape[0]}x{x.shape[1]}; the other images are "
                f"{common[0]}x{common[1]}. Pass image_size=(height, width) "
                "to resize every image to one size."
            )
    if image_size is None:
        return np.stack(images)
    out = np.empty((len(images), *image_size, common[-1]), np.uint8)
    for shape in shapes:
        rows = [i for i, x in enumerate(images) if x.shape == shape]
        out[rows] = _resize_uint8(np.stack([images[i] for i in rows]),
                                  image_size)
    return out


def _is_image_file(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _omniglot_files(path):
    """Yields (alphabet, character, where, image_bytes) from zips or folders.

    `where` names the file (the zip and its member) for error messages.
    Archives that share files (the small background sets both hold Greek and
    Latin) are read once per (alphabet, character, file).
    """
    if os.path.isfile(path):
        archives, folders = [path], []
    elif os.path.isdir(path):
        archives = sorted(glob.glob(os.path.join(path, "images_*.zip")))
        folders = [] if archives else [path]
    else:
        raise FileNotFoundError(
            f"Omniglot data not found at {path!r}: expected a folder holding "
            "images_background*.zip / images_evaluation.zip, a folder laid "
            "out as alphabet/character/*.png, or one of those zips."
        )
    seen = set()
    for archive in archives:
        try:
            with zipfile.ZipFile(archive) as z:
                for name in sorted(z.namelist()):
                    parts = name.split("/")
                    if not _is_image_file(name) or len(parts) < 3:
                        continue
                    key = tuple(parts[-3:])
                    if key not in seen:
                        seen.add(key)
                        yield (*key[:2], f"{archive}:{name}", z.read(name))
        except zipfile.BadZipFile as e:
            raise ValueError(f"{archive!r} is not a readable zip: {e}") from e
    for folder in folders:
        for file in sorted(glob.glob(os.path.join(folder, "**", "*"),
                                     recursive=True)):
            parts = os.path.relpath(file, folder).split(os.sep)
            if not _is_image_file(file) or len(parts) < 3:
                continue
            key = tuple(parts[-3:])
            if key not in seen and os.path.isfile(file):
                seen.add(key)
                with open(file, "rb") as f:
                    yield (*key[:2], file, f.read())


def load_omniglot(path, image_size=OMNIGLOT_IMAGE_SIZE, channels=1):
    """Loads Omniglot from the official zips or an extracted folder.

    Any folder or zip laid out as `alphabet/character/image` works; the
    images may be PNG (any colour type and bit depth), JPEG, GIF, BMP or
    WebP, decoded by `keras_meta.data.image_decoding.decode_image` (dark
    ink on white, transparency composited over white).

    Args:
        path: a folder with `images_background*.zip` and/or
            `images_evaluation.zip`, a folder laid out as
            `alphabet/character/*.png`, or one zip.
        image_size: (height, width) to resize every image to, here; None
            keeps the size (then all images must have one size).
        channels: 1 (grayscale) or 3 (RGB).

    Returns:
        An `ImageClasses` whose classes are characters named
        "Alphabet/characterNN", grouped by alphabet; images are uint8,
        white background as in the files (the models invert).

    Raises:
        ValueError: no images; a file that is not an image, or of another
            size or channel count than the others (`image_size=None`); the
            message names the file.
    """
    image_size = check_image_size(image_size)
    images, files, labels, names, groups, index = [], [], [], [], [], {}
    for alphabet, character, where, data in _omniglot_files(path):
        key = f"{alphabet}/{character}"
        if key not in index:
            index[key] = len(names)
            names.append(key)
            groups.append(alphabet)
        images.append(decode_image(data, channels=channels, name=where))
        files.append(where)
        labels.append(index[key])
    if not images:
        raise ValueError(
            f"No Omniglot PNG images found under {path!r} (nor "
            f"{', '.join(IMAGE_EXTENSIONS[1:])}); expected "
            "alphabet/character/image files."
        )
    return ImageClasses(
        images=stack_images(images, files, image_size),
        labels=np.asarray(labels, np.int32),
        class_names=names,
        class_groups=groups,
    )


def _read_element(element, i):
    """(image [h, w, c], label, alphabet or None) of one dataset element."""
    alphabet = None
    if isinstance(element, dict) and {"image", "label"} <= set(element):
        image, label = element["image"], element["label"]
        alphabet = element.get("alphabet")
    elif isinstance(element, tuple) and len(element) == 2:
        image, label = element
    else:
        given = (sorted(element) if isinstance(element, dict) else
                 f"a {type(element).__name__} of {len(element)}"
                 if isinstance(element, tuple) else type(element).__name__)
        raise ValueError(
            f"Dataset element {i}: expected (image, label) or a dict with "
            f"'image' and 'label'; got {given}."
        )
    image, label = np.asarray(image), np.asarray(label)
    if image.ndim not in (2, 3):
        raise ValueError(
            f"Dataset element {i}: the image must have shape [height, width]"
            f" or [height, width, channels]; got {image.shape}."
        )
    if label.ndim != 0 or label.dtype.kind not in "iu":
        raise ValueError(
            f"Dataset element {i}: the label must be a scalar int; got "
            f"{label.dtype} of shape {label.shape}."
        )
    image = image[..., None] if image.ndim == 2 else image
    return image, int(label), None if alphabet is None else int(alphabet)


def from_dataset(dataset, image_size=None, class_names=None, groups=None):
    """Reads a finite `tf.data.Dataset` of `(image, label)` into memory.

    Images may be uint8, another integer type with values in [0, 255], or
    floats in [0, 1] or [0, 255] (the range is judged over the whole
    dataset; see `keras_meta.data.image_decoding.to_uint8`).

    Args:
        dataset: yields `(image, label)` (or dicts with "image" and "label";
            an "alphabet" entry becomes the class group).
        image_size: (height, width) to resize to, or None to keep the size
            (then all images must have one size).
        class_names: optional names indexed by label.
        groups: optional group names indexed by the "alphabet" entries.

    Raises:
        ValueError: no images; an image of an unsupported dtype or range,
            shape, size or channel count (naming the element); a label that
            is not a scalar int.
    """
    images, labels, alphabets = [], [], {}
    for i, element in enumerate(dataset.as_numpy_iterator()):
        image, label, alphabet = _read_element(element, i)
        if alphabet is not None:
            alphabets[label] = alphabet
        images.append(image)
        labels.append(label)
    if not images:
        raise ValueError("The dataset holds no images.")
    images = stack_images(to_uint8(images, "The dataset's images"),
                          [f"Dataset element {i}" for i in range(len(images))],
                          image_size)
    # Relabel to 0..C-1 in label order.
    present = np.unique(labels)
    relabel = {int(l): i for i, l in enumerate(present)}
    names = [class_names[l] if class_names is not None else str(l)
             for l in present]
    class_groups = None
    if alphabets:
        class_groups = [
            groups[alphabets[l]] if groups is not None else str(alphabets[l])
            for l in present]
    return ImageClasses(
        images=images,
        labels=np.asarray([relabel[l] for l in labels], np.int32),
        class_names=names,
        class_groups=class_groups,
    )


def _check_tfds_split(builder, name, split):
    """Rejects an unknown split name of a prepared dataset before loading.

    An unprepared dataset's splits are only known after its download, so
    it is checked by `tfds.load` then.
    """
    is_prepared = getattr(builder, "is_prepared", None)
    if not isinstance(split, str) or not (is_prepared and is_prepared()):
        return
    known = sorted(builder.info.splits)
    # "train[:80%]+validation" -> ["train", "validation"]
    parts = [part.split("[")[0].strip() for part in split.split("+")]
    unknown = [part for part in parts if part not in known]
    if unknown:
        raise ValueError(
            f"TFDS dataset {name!r} has no split {unknown[0]!r} (asked for "
            f"split={split!r}); its splits are {known}."
        )


def load_tfds(name, split="train", data_dir=None, image_size=None,
              grayscale=None, download=True):
    """Loads a TFDS image-classification dataset into an `ImageClasses`.

    Omniglot's 3-channel images become 1-channel (the channels are equal),
    so models see what `tf.io.decode_png(..., channels=1)` gives.

    Raises:
        ValueError: an unknown dataset name or split.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError and friends
        raise ValueError(
            f"Unknown TFDS dataset {name!r}: {e}".split("\n")[0]
        ) from e
    _check_tfds_split(builder, name, split)
    if grayscale is None:
        grayscale = name.split(":")[0] == "omniglot"
    try:
        ds = tfds.load(name, split=split, data_dir=data_dir,
                       download=download)
    except (ValueError, KeyError) as e:
        raise ValueError(
            f"TFDS dataset {name!r} has no split {split!r}: {e}"
        ) from e
    features = builder.info.features

    def prepare(example):
        image = example["image"]
        if grayscale and image.shape[-1] == 3:
            image = image[..., :1]
        out = {"image": image, "label": example["label"]}
        if "alphabet" in example:
            out["alphabet"] = example["alphabet"]
        return out

    label_names = getattr(features["label"], "names", None)
    group_names = (getattr(features["alphabet"], "names", None)
                   if "alphabet" in features else None)
    return from_dataset(ds.map(prepare), image_size=image_size,
                        class_names=label_names, groups=group_names)


def load_image_classes(source, split="train", data_dir=None,
                       image_size=OMNIGLOT_IMAGE_SIZE):
    """An `ImageClasses` from any supported source.

    Args:
        source: an `ImageClasses`; a `tf.data.Dataset` of (image, label); a
            path to Omniglot zips or folders; or a TFDS dataset name.
        split: the TFDS split (TFDS names only).
        data_dir: the TFDS data directory (TFDS names only).
        image_size: (height, width) to resize to once; None keeps the size.
    """
    if isinstance(source, ImageClasses):
        return source
    if isinstance(source, tf.data.Dataset):
        return from_dataset(source, image_size=image_size)
    if isinstance(source, (str, os.PathLike)):
        source = os.fspath(source)
        if os.path.exists(source) or os.sep in source or source.endswith(
                ".zip"):
            return load_omniglot(source, image_size=image_size)
        return load_tfds(source, split=split, data_dir=data_dir,
                         image_size=image_size)
    raise ValueError(
        "`source` must be a TFDS name, a path to Omniglot data, a "
        f"tf.data.Dataset of (image, label) or an ImageClasses; got "
        f"{type(source).__name__}."
    )

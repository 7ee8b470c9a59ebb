"""Labelled images held in memory by class, from TFDS, Omniglot files or tf.data.

Few-shot episodes sample classes, then examples within a class. Every
source is decoded and resized once into an `ImageClasses` (uint8 images,
sorted by class, with an optional group per class such as the Omniglot
alphabet), which `keras_meta.data.episodes` samples from.
"""

import dataclasses
import glob
import io
import os
import zipfile

import keras
import numpy as np
import tensorflow as tf

OMNIGLOT_IMAGE_SIZE = (28, 28)


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
        order = np.argsort(self.labels, kind="stable")
        self.images = np.ascontiguousarray(self.images[order])
        self.labels = np.asarray(self.labels[order], dtype=np.int32)
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"{len(self.images)} images but {len(self.labels)} labels."
            )

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


def _decode_png(data, channels=1):
    return tf.io.decode_png(data, channels=channels).numpy()


def _resize_uint8(images, image_size, batch=512):
    layer = resizing_layer(image_size)
    out = [np.asarray(layer(images[i:i + batch]))
           for i in range(0, len(images), batch)]
    return np.concatenate(out).astype(np.uint8)


def _omniglot_files(path):
    """Yields (alphabet, character, file_id, png_bytes) from zips or folders.

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
                    if not name.endswith(".png") or len(parts) < 3:
                        continue
                    key = tuple(parts[-3:])
                    if key not in seen:
                        seen.add(key)
                        yield (*key, z.read(name))
        except zipfile.BadZipFile as e:
            raise ValueError(f"{archive!r} is not a readable zip: {e}") from e
    for folder in folders:
        for file in sorted(glob.glob(os.path.join(folder, "**", "*.png"),
                                     recursive=True)):
            parts = os.path.relpath(file, folder).split(os.sep)
            if len(parts) < 3:
                continue
            key = tuple(parts[-3:])
            if key not in seen:
                seen.add(key)
                with open(file, "rb") as f:
                    yield (*key, f.read())


def load_omniglot(path, image_size=OMNIGLOT_IMAGE_SIZE):
    """Loads Omniglot from the official zips or an extracted folder.

    Args:
        path: a folder with `images_background*.zip` and/or
            `images_evaluation.zip`, a folder laid out as
            `alphabet/character/*.png`, or one zip.
        image_size: (height, width) to resize to once, here.

    Returns:
        An `ImageClasses` whose classes are characters named
        "Alphabet/characterNN", grouped by alphabet; images are uint8 with
        one channel, white background as in the files (the models invert).
    """
    images, labels, names, groups, index = [], [], [], [], {}
    for alphabet, character, _, data in _omniglot_files(path):
        key = f"{alphabet}/{character}"
        if key not in index:
            index[key] = len(names)
            names.append(key)
            groups.append(alphabet)
        images.append(_decode_png(data))
        labels.append(index[key])
    if not images:
        raise ValueError(f"No Omniglot PNG images found under {path!r}.")
    return ImageClasses(
        images=_resize_uint8(np.stack(images), image_size),
        labels=np.asarray(labels, np.int32),
        class_names=names,
        class_groups=groups,
    )


def from_dataset(dataset, image_size=None, class_names=None, groups=None):
    """Reads a finite `tf.data.Dataset` of `(image, label)` into memory.

    Args:
        dataset: yields `(image, label)` (or dicts with "image" and "label";
            an "alphabet" entry becomes the class group).
        image_size: (height, width) to resize to, or None to keep the size.
        class_names: optional names indexed by label.
        groups: optional group names indexed by the "alphabet" entries.
    """
    images, labels, alphabets = [], [], {}
    for element in dataset.as_numpy_iterator():
        if isinstance(element, dict):
            image, label = element["image"], element["label"]
            if "alphabet" in element:
                alphabets[int(label)] = int(element["alphabet"])
        else:
            image, label = element
        image = np.asarray(image)
        images.append(image[..., None] if image.ndim == 2 else image)
        labels.append(int(label))
    if not images:
        raise ValueError("The dataset holds no images.")
    images = np.stack(images)
    if images.dtype != np.uint8:
        images = np.clip(images, 0, 255).astype(np.uint8)
    if image_size is not None and images.shape[1:3] != tuple(image_size):
        images = _resize_uint8(images, image_size)
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

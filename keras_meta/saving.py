"""Version stamps in saved configs, checked when a `.keras` file is loaded.

Every serializable keras_meta object writes the package version and a file
format number into its config. Loading a file from an older release works
as long as its format is one this release reads; a newer format, or a
config this release cannot build, fails with a message that names both
versions. Keras's safe mode is left as it is: nothing here runs code from a
file. Also: atomic writes of saved files.
"""

import errno
import json
import os

import tensorflow as tf

from keras_meta.version import __version__

VERSION_KEY = "keras_meta_version"
FORMAT_KEY = "keras_meta_format"
# Bump when a saved config changes so that older releases cannot read it.
FORMAT = 1
# Files written before version stamps existed (keras_meta 0.1.0).
UNSTAMPED_VERSION = "0.1.0"


def stamp(config):
    """Adds the package version and format to a `get_config` dict."""
    config[VERSION_KEY] = __version__
    config[FORMAT_KEY] = FORMAT
    return config


def check(config, class_name):
    """Pops the stamp from `config`; raises if this release cannot read it.

    Args:
        config: a config dict from a saved file (modified in place).
        class_name: the class being loaded, for the message.

    Returns:
        The version that wrote the file.

    Raises:
        ValueError: the file's format is newer than this release reads.
    """
    saved = config.pop(VERSION_KEY, UNSTAMPED_VERSION)
    saved_format = config.pop(FORMAT_KEY, 1)
    if not isinstance(saved_format, int) or saved_format > FORMAT:
        raise ValueError(
            f"This {class_name} was saved by keras_meta {saved} (file "
            f"format {saved_format}); this is keras_meta {__version__}, which "
            f"reads formats up to {FORMAT}. Upgrade keras_meta to load it."
        )
    return saved


def build(cls, config, class_name=None):
    """`cls(**config)` with the stamp checked and a clear error on failure.

    A config from another release that this one cannot build (an argument
    renamed or removed) raises a `ValueError` naming both versions instead
    of a bare `TypeError` or an unrelated-looking `ValueError`.
    """
    class_name = class_name or cls.__name__
    saved = check(config, class_name)
    try:
        return cls(**config)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"Cannot load this {class_name}: it was saved by keras_meta "
            f"{saved} and this is keras_meta {__version__}; its config does "
            f"not fit this release ({e})."
        ) from e


def replace_atomically(path, write):
    """Writes a file through `write(temporary_path)`, then renames it.

    The file at `path` is either the old one or the complete new one, even
    if the process is killed mid-write; the temporary file (a dot-name in
    the same folder) is flushed to disk before the rename.

    Raises:
        OSError: the write failed (a full disk, a read-only folder...):
            the temporary file is removed, the old file is left as it was,
            and the error names `path` and keeps the original `errno`.
    """
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base, ext = os.path.splitext(name)
    temporary = os.path.join(folder, f".tmp-{base}-{os.getpid()}{ext}")
    try:
        write(temporary)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException as e:
        _remove_quietly(temporary)
        if isinstance(e, OSError):
            raise _write_error(path, e) from e
        raise


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _write_error(path, error):
    """An `OSError` of the same errno that names `path` and the cause."""
    if error.errno == errno.ENOSPC:
        why = "the disk is full"
    elif error.errno == errno.EDQUOT:
        why = "the disk quota is exceeded"
    else:
        why = error.strerror or str(error)
    return OSError(
        error.errno, f"Could not write {path}: {why} ({error}). The "
        "previous file, if any, is unchanged and no temporary file was "
        "left; free some space or choose another directory, then rerun "
        "(with --resume to continue a training run).")


def save_model(model, path):
    """`model.save(path)`, atomically (see `replace_atomically`)."""
    replace_atomically(path, model.save)


def write_json(path, value):
    """Writes `value` as indented JSON, atomically."""

    def write(temporary):
        with open(temporary, "w") as f:
            json.dump(value, f, indent=2)

    replace_atomically(path, write)


def unsaved_counter(value, dtype, name):
    """A runtime counter that `.keras` files do not store.

    A plain `tf.Variable`, not a Keras weight or optimizer variable: Keras
    loads those by position, so adding one would stop files saved by
    earlier releases from loading. Under a `tf.distribute` strategy the
    first replica's value is the one kept.
    """
    return tf.Variable(
        tf.constant(value, dtype), trainable=False, name=name,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

"""Checkpoint files of a run and the callback that writes them.

A checkpoint is `<directory>/ckpt-<step, 9 digits><ext>`, written under a
temporary name and renamed into place (`keras_meta.saving`), so a name
that matches is a complete file when it is written; a disk or a copy can
still damage it later, which `damage` finds (both `.keras` and `.npz`
files are zip archives).
"""

import os
import zipfile

import keras

from keras_meta import saving
from keras_meta import signals

CHECKPOINT_PREFIX = "ckpt-"


def checkpoint_path(directory, step, ext=".keras"):
    """The path of the checkpoint of `step` in `directory`."""
    return os.path.join(directory, f"{CHECKPOINT_PREFIX}{step:09d}{ext}")


def _checkpoint_names(directory, ext):
    if not os.path.isdir(directory):
        return []
    return sorted(n for n in os.listdir(directory)
                  if n.startswith(CHECKPOINT_PREFIX) and n.endswith(ext))


def latest_checkpoint(directory, ext=".keras"):
    """The newest complete checkpoint in `directory`, or None.

    Only files renamed into place (`keras_meta.saving.replace_atomically`)
    count; a temporary file left by a crash in the middle of a write is
    never picked up.
    """
    names = _checkpoint_names(directory, ext)
    return os.path.join(directory, names[-1]) if names else None


def checkpoint_paths(directory, ext=".keras"):
    """The checkpoints in `directory`, newest first (complete names only,
    as `latest_checkpoint`; none of them verified)."""
    return [os.path.join(directory, name)
            for name in reversed(_checkpoint_names(directory, ext))]


# The members that every checkpoint of a kind holds.
REQUIRED_MEMBERS = {".keras": ("config.json", "model.weights.h5"),
                    ".npz": ("__info__.npy",)}


def damage(path):
    """Why the checkpoint at `path` cannot be read, or None if it is intact.

    Reads the whole zip archive and checks every member's CRC and the
    members its kind requires (`REQUIRED_MEMBERS`); it does not build the
    model, so a file that passes may still fail to load (the caller names
    the file then).
    """
    try:
        size = os.path.getsize(path)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if size == 0:
        return "empty file (0 bytes)"
    if not zipfile.is_zipfile(path):
        return (f"not a complete zip archive ({size} bytes; truncated or "
                "overwritten)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"damaged zip archive ({type(e).__name__}: {e})"
    if bad is not None:
        return f"damaged zip archive (bad CRC in member {bad!r})"
    ext = os.path.splitext(path)[1]
    missing = [m for m in REQUIRED_MEMBERS.get(ext, ()) if m not in names]
    if missing:
        return f"not a {ext} checkpoint (no {', '.join(missing)} inside)"
    return None


def prune_checkpoints(directory, keep, ext=".keras"):
    """Deletes all but the newest `keep` checkpoints."""
    for name in _checkpoint_names(directory, ext)[:-keep]:
        os.remove(os.path.join(directory, name))


class PeriodicCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (optimizer included) every N steps, atomically,
    and when the process is asked to stop.

    Each checkpoint is a `.keras` file named by the optimizer's step count,
    written to a temporary name and renamed into place, so a crash never
    leaves a half-written checkpoint under a checkpoint's name. The newest
    `keep` are kept. Resume with `keras.models.load_model(latest_checkpoint(
    directory))`: the step count is `model.optimizer.iterations`.

    On SIGTERM or SIGINT during `fit` (with `save_on_signals`), the step in
    progress finishes, a checkpoint is written, training stops, and
    `interrupted_by` holds the signal number, so the caller can exit
    instead of carrying on as if training had finished.

    Example:

    ```python
    maml.fit(episodes, epochs=10, steps_per_epoch=500, callbacks=[
        keras_meta.callbacks.PeriodicCheckpoint("runs/x/checkpoints", 500)])
    ```

    Args:
        directory: where checkpoints go.
        every_n_steps: save when the step count crosses a multiple of this.
        keep: how many checkpoints to keep.
        save_on_signals: catch SIGTERM and SIGINT during `fit` (main
            thread only) to checkpoint and stop.
    """

    def __init__(self, directory, every_n_steps=1000, keep=3,
                 save_on_signals=True):
        super().__init__()
        if every_n_steps < 1 or keep < 1:
            raise ValueError(
                "`every_n_steps` and `keep` must be >= 1; got "
                f"{every_n_steps} and {keep}."
            )
        self.directory = directory
        self.every_n_steps = every_n_steps
        self.keep = keep
        self.save_on_signals = save_on_signals
        self._stop = signals.StopRequest(
            signals.STOP_SIGNALS if save_on_signals else ())
        self._last_saved = None

    @property
    def interrupted_by(self):
        """The signal that stopped the last `fit`, or None."""
        return self._stop.signum

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def on_train_begin(self, logs=None):
        self._last_saved = self._step()
        self._stop.install()

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if self.interrupted_by is not None:
            self.save(step)
            self.model.stop_training = True
        elif step // self.every_n_steps > self._last_saved // self.every_n_steps:
            self.save(step)

    def on_epoch_end(self, epoch, logs=None):
        # A signal during validation: stop before the next epoch.
        if self.interrupted_by is not None:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self._stop.restore()
        step = self._step()
        if step != self._last_saved:
            self.save(step)

    def save(self, step):
        os.makedirs(self.directory, exist_ok=True)
        # Written under a dot-name, flushed, then renamed: a crash never
        # leaves a partial file under a checkpoint's name.
        saving.save_model(self.model, checkpoint_path(self.directory, step))
        self._last_saved = step
        prune_checkpoints(self.directory, self.keep)

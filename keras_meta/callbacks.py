"""Keras callbacks for meta-learning runs."""

import os
import time

import keras
import numpy as np
import tensorflow as tf

from keras_meta import errors
from keras_meta import saving
from keras_meta import signals


class _SummaryCallback(keras.callbacks.Callback):
    """A callback that writes TensorBoard summaries to its own `log_dir`."""

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = log_dir
        self._writer = None

    def _get_writer(self):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        return self._writer


class InnerRateSummary(_SummaryCallback):
    """Writes a MAML model's learned inner rates to TensorBoard.

    At the end of each epoch, for each learned rate variable: a histogram
    of its values and scalars of its mean. Does nothing for a fixed rate.
    Summaries are written here, outside the compiled step, because
    `tf.summary` inside an XLA step fails once a default writer is set.

    Example:

    ```python
    maml.fit(episodes, epochs=10, steps_per_epoch=1000, callbacks=[
        keras.callbacks.TensorBoard("runs/x"),
        keras_meta.callbacks.InnerRateSummary("runs/x/rates"),
    ])
    ```

    Args:
        log_dir: directory for the event files.
    """

    def on_epoch_end(self, epoch, logs=None):
        rates = getattr(self.model, "inner_rate_variables", [])
        if not rates:
            return
        adapted = self.model.adapted_variables
        with self._get_writer().as_default(step=epoch):
            for rate, variable in zip(rates, adapted):
                name = "inner_rate/" + variable.path.replace("/", "_")
                values = np.asarray(rate.numpy())
                tf.summary.histogram(name, values)
                tf.summary.scalar(name + "/mean", float(values.mean()))
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class InnerOptimizerSummary(InnerRateSummary):
    """Writes a MAML model's inner update rule to TensorBoard.

    At the end of each epoch: the learned rates as `InnerRateSummary` does
    (`inner_rate/<variable>` histograms and means); a histogram of each of
    the rule's other meta-parameters (`inner_optimizer/<weight>`, e.g. the
    LSTM weights of `keras_meta.models.InnerLSTM`); and, given an episode,
    the size of the inner updates per inner step on its tasks
    (`inner_update/step_<k>`: the mean over tasks of the root mean square
    update of the adapted coordinates, and `.../tasks` a histogram over
    tasks; see `MAML.inner_update_norms`). For plain SGD the update is the
    rate times the gradient; a learned rule shows how it rescales its steps.

    Example:

    ```python
    maml = keras_meta.MAML(net, inner_steps=5, inner_optimizer="lstm")
    maml.fit(episodes, epochs=10, steps_per_epoch=1000, callbacks=[
        keras_meta.callbacks.InnerOptimizerSummary(
            "runs/x/inner", episode=next(iter(validation_episodes)))])
    ```

    Args:
        log_dir: directory for the event files.
        episode: optional episode dict (with a task axis) whose tasks the
            update sizes are measured on.
        max_tasks: at most this many of the episode's tasks are used.
    """

    def __init__(self, log_dir, episode=None, max_tasks=8):
        super().__init__(log_dir)
        self.episode = None if episode is None else {
            key: value[:max_tasks] for key, value in episode.items()
        }

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        model = self.model
        rates = {id(v) for v in getattr(model, "inner_rate_variables", [])}
        others = [v for v in getattr(model, "inner_optimizer_variables", [])
                  if id(v) not in rates]
        with self._get_writer().as_default(step=epoch):
            for weight in others:
                tf.summary.histogram("inner_optimizer/" + weight.name,
                                     np.asarray(weight.numpy()))
            if self.episode is not None:
                norms = np.asarray(model.inner_update_norms(self.episode))
                for k in range(norms.shape[1]):
                    name = f"inner_update/step_{k + 1}"
                    tf.summary.scalar(name, float(norms[:, k].mean()))
                    tf.summary.histogram(name + "/tasks", norms[:, k])
        self._writer.flush()


class LearnedStepSizeSummary(_SummaryCallback):
    """Writes the per-variable step sizes of a `LearnedOptimizer` to TensorBoard.

    At the end of each epoch, one scalar per variable,
    `learned_optimizer/step_size/<variable path>`: the step size the
    per-tensor rule currently gives Adam's direction for that variable (see
    `LearnedOptimizer.step_sizes`). Written outside the compiled step, like
    `InnerRateSummary`.

    Example:

    ```python
    model.compile(optimizer=keras_meta.LearnedOptimizer(), loss="mse")
    model.fit(x, y, epochs=10, callbacks=[
        keras_meta.callbacks.LearnedStepSizeSummary("runs/x/step_sizes")])
    ```

    Args:
        log_dir: directory for the event files.
    """

    def on_epoch_end(self, epoch, logs=None):
        sizes = self.model.optimizer.step_sizes()
        with self._get_writer().as_default(step=epoch):
            for path, size in sizes.items():
                tf.summary.scalar(
                    "learned_optimizer/step_size/" + path.replace("/", "_"),
                    size)
        self._writer.flush()


class EpisodeImageSummary(keras.callbacks.Callback):
    """Writes the support and query images of one episode to TensorBoard.

    Once, when training begins: a look at what the model is trained on.

    Args:
        log_dir: directory for the event files.
        episode: an episode dict of images (uint8 or float in [0, 1]).
        max_images: images per grid.
    """

    def __init__(self, log_dir, episode, max_images=10):
        super().__init__()
        self.log_dir = log_dir
        self.episode = episode
        self.max_images = max_images

    def on_train_begin(self, logs=None):
        writer = tf.summary.create_file_writer(self.log_dir)
        with writer.as_default(step=0):
            for key in ("support_x", "query_x"):
                images = tf.convert_to_tensor(self.episode[key][0])
                if images.shape.rank != 4:
                    return
                if images.dtype != tf.uint8:
                    images = tf.image.convert_image_dtype(images, tf.uint8,
                                                          saturate=True)
                tf.summary.image(f"episode/{key}", images,
                                 max_outputs=self.max_images)
        writer.close()


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training after `max_consecutive` skipped non-finite steps.

    keras_meta skips, inside the compiled step, any step whose losses,
    gradients or updates are not finite, and counts it: `MAML` counts
    meta-steps (`skipped_steps`, `consecutive_skipped_steps`, and which
    quantity failed), `LearnedOptimizer` counts steps in which any variable
    was kept (`nonfinite_count`, `consecutive_nonfinite_steps`). This
    callback reads those counters after each batch and raises a
    `keras_meta.errors.NonFiniteError` that names the step and the quantity
    once they show `max_consecutive` skips in a row, so a run that has gone
    bad stops instead of spinning. The weights keep their last finite
    values. It also adds the skip count to the logs (and so to TensorBoard)
    of models compiled with a `LearnedOptimizer`.

    `MAML.fit` adds one by default (`MAML(max_consecutive_skips=...)`).

    Example:

    ```python
    model.compile(optimizer=keras_meta.LearnedOptimizer(), loss="mse")
    model.fit(x, y, callbacks=[keras_meta.callbacks.NonFiniteGuard(10)])
    ```

    Args:
        max_consecutive: int >= 1.
    """

    def __init__(self, max_consecutive=20):
        super().__init__()
        if (isinstance(max_consecutive, bool)
                or not isinstance(max_consecutive, int)
                or max_consecutive < 1):
            raise ValueError(
                "`max_consecutive` must be an int >= 1; got "
                f"{max_consecutive!r}.")
        self.max_consecutive = max_consecutive

    def _counters(self):
        """(consecutive, total, step, quantity) or None if nothing counts."""
        model = self.model
        step = int(model.optimizer.iterations.numpy())
        if hasattr(model, "consecutive_skipped_steps"):
            # Skipped meta-steps do not advance the optimizer's count.
            skipped = int(model.skipped_steps.numpy())
            quantity = int(model.nonfinite_quantity.numpy())
            return (int(model.consecutive_skipped_steps.numpy()), skipped,
                    step + skipped, errors.NONFINITE_QUANTITIES[quantity])
        optimizer = model.optimizer
        if hasattr(optimizer, "consecutive_nonfinite_steps"):
            return (optimizer.consecutive_nonfinite_steps,
                    int(optimizer.nonfinite_count.numpy()), step,
                    "gradient or learned update of some variable")
        return None

    def on_train_batch_end(self, batch, logs=None):
        counters = self._counters()
        if counters is None:
            return
        consecutive, total, step, quantity = counters
        if consecutive >= self.max_consecutive:
            # Imported here: keras_meta.errors is tiny, but callbacks must
            # not import the package (it imports them).
            from keras_meta.errors import NonFiniteError

            self.model.stop_training = True
            raise NonFiniteError(
                f"Training stopped at step {step}: the {quantity} was not "
                f"finite in {consecutive} consecutive steps, which were "
                f"skipped ({total} skipped updates in all; the weights hold "
                "their "
                "last finite values). Lower the learning rates, check the "
                "data for NaN/inf, or raise the limit "
                f"(max_consecutive={self.max_consecutive}).",
                step=step, quantity=quantity)

    def on_epoch_end(self, epoch, logs=None):
        counters = self._counters()
        if counters is not None and logs is not None:
            logs.setdefault("skipped_steps", counters[1])


class TrainingTimeLimit(keras.callbacks.Callback):
    """Stops training once `seconds` of wall time have passed.

    Args:
        seconds: the budget, counted from the start of `fit`.
    """

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds
        self._start = None

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() - self._start > self.seconds:
            self.model.stop_training = True


CHECKPOINT_PREFIX = "ckpt-"


def checkpoint_path(directory, step, ext=".keras"):
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

"""TensorBoard summaries written outside the compiled step.

`tf.summary` inside an XLA-compiled step fails once a default writer is
set, so these callbacks read the model's state between steps and write it
with a writer of their own.
"""

import keras
import numpy as np
import tensorflow as tf


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
    LSTM weights of `keras_meta.maml.InnerLSTM`); and, given an episode,
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

"""TensorBoard summaries written outside the compiled step.

`tf.summary` inside an XLA-compiled step fails once a default writer is
set, so these callbacks read the model's state between steps and write it
with a writer of their own. `TensorBoard` is Keras's callback with the
logged metrics grouped (`grouped_tag`), so that the scalars page opens on
the objective and the accuracies.
"""

import re

import keras
import numpy as np
import tensorflow as tf

# How `TensorBoard` names a logged metric: `(pattern, tag)` pairs, the
# first pattern that matches the whole name wins and `tag` is its
# `re.Match.expand` template. TensorBoard shows tag groups (the text before
# the first "/") in alphabetical order, so the groups are named to sort as
# they matter: meta (the objective and the accuracies after adaptation),
# optimizer, query (per-step and pre-adaptation query measures), rule (the
# inner rule, `InnerOptimizerSummary`), stability (skipped steps).
TAG_GROUPS = (
    (r"loss", "meta/loss"),
    (r"post_adapt_loss", "query/post_adapt_loss"),
    (r"post_adapt_(.+)", r"meta/\1"),
    (r"pre_adapt_(.+)", r"query/pre_adapt_\1"),
    (r"query_loss_after_step_(\d+)", r"query/loss_after_step_\1"),
    (r"(consecutive_)?skipped_steps", r"stability/\g<0>"),
    (r"learning_rate.*|steps_per_second", r"optimizer/\g<0>"),
    (r"[^/]+", r"meta/\g<0>"),
)


def grouped_tag(name, groups=TAG_GROUPS, prefix=""):
    """The TensorBoard tag of logged metric `name`: `group/prefix+rest`.

    Args:
        name: a key of Keras's logs (without `val_`), e.g. "loss".
        groups: `(pattern, tag)` pairs (`TAG_GROUPS`, or a learner's own
            pairs put before them).
        prefix: put before the name inside its group ("batch_" for
            per-batch values).

    Returns:
        The tag; `name` itself when no pattern matches.

    Example:

    ```python
    grouped_tag("post_adapt_accuracy")  # "meta/accuracy"
    grouped_tag("loss", prefix="batch_")  # "meta/batch_loss"
    ```
    """
    for pattern, template in groups:
        match = re.fullmatch(pattern, name)
        if match:
            group, _, rest = match.expand(template).partition("/")
            return f"{group}/{prefix}{rest}" if rest else prefix + group
    return prefix + name


class TensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback with grouped scalar tags.

    Keras writes each log as `epoch_<name>`, so the scalars page lists
    every metric alphabetically as its own group (MAML's opens on
    `epoch_consecutive_skipped_steps`, a flat zero). This callback writes
    the same values, to the same `train` and `validation` runs, under
    `grouped_tag(name)`: `meta/loss` (the objective), `meta/accuracy` (after
    adaptation), `optimizer/learning_rate`, `query/pre_adapt_loss`,
    `query/loss_after_step_1`, `stability/skipped_steps`, ... Per-batch
    values (`update_freq`) get a `batch_` prefix inside their group;
    evaluation values against the optimizer's step count go to
    `vs_iterations/<tag>`. Everything else (graph, histograms, profile) is
    Keras's.

    A learner whose logs need other names reuses this with its own pairs:
    the `tag_groups` argument, or else a `tensorboard_tag_groups` attribute
    of the model, tried before `TAG_GROUPS`.

    Example:

    ```python
    maml.fit(episodes, epochs=10, steps_per_epoch=1000, callbacks=[
        keras_meta.callbacks.TensorBoard("runs/x/logs")])

    class ProtoNet(keras.Model):  # a learner's own names
        tensorboard_tag_groups = (("prototype_norm", "query/prototype_norm"),)
    ```

    Args:
        log_dir: as in `keras.callbacks.TensorBoard`.
        tag_groups: `(pattern, tag)` pairs tried before `TAG_GROUPS`.
        **kwargs: other `keras.callbacks.TensorBoard` arguments.
    """

    def __init__(self, log_dir="logs", tag_groups=None, **kwargs):
        super().__init__(log_dir=log_dir, **kwargs)
        self.tag_groups = None if tag_groups is None else tuple(tag_groups)

    def _groups(self):
        own = self.tag_groups
        if own is None:
            own = getattr(self.model, "tensorboard_tag_groups", ())
        return tuple(own) + TAG_GROUPS

    def _write(self, writer, logs, step, prefix=""):
        if not logs:
            return
        groups = self._groups()
        with writer.as_default():
            for name, value in logs.items():
                tf.summary.scalar(grouped_tag(name, groups, prefix), value,
                                  step=step)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        optimizer = self.model.optimizer
        if isinstance(optimizer, keras.optimizers.Optimizer):
            train["learning_rate"] = float(keras.ops.convert_to_numpy(
                optimizer.learning_rate))
        if self.write_steps_per_second:
            train["steps_per_second"] = self._compute_steps_per_second()
        self._write(self._train_writer, train, epoch)
        self._write(self._val_writer, {
            k[4:]: v for k, v in logs.items() if k.startswith("val_")}, epoch)
        super().on_epoch_end(epoch, {})  # histograms and embeddings

    def on_train_batch_end(self, batch, logs=None):
        if isinstance(logs, dict) and logs:
            groups = self._groups()
            for name, value in logs.items():
                tf.summary.scalar(grouped_tag(name, groups, "batch_"), value,
                                  step=self._global_train_batch)
        super().on_train_batch_end(batch, None)

    def on_test_end(self, logs=None):
        optimizer = self.model.optimizer
        if logs and optimizer is not None and hasattr(optimizer,
                                                      "iterations"):
            groups = self._groups()
            with self._val_writer.as_default():
                for name, value in logs.items():
                    tf.summary.scalar(
                        "vs_iterations/" + grouped_tag(name, groups), value,
                        step=optimizer.iterations)
        super().on_test_end({})


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
    of its values (`rule/rate/<variable>`) and a scalar of its mean
    (`.../mean`). Does nothing for a fixed rate.
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
                name = "rule/rate/" + variable.path.replace("/", "_")
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
    (`rule/rate/<variable>` histograms and means); a histogram of each of
    the rule's other meta-parameters (`rule/weights/<weight>`, e.g. the
    LSTM weights of `keras_meta.maml.InnerLSTM`); and, given an episode,
    the size of the inner updates per inner step on its tasks
    (`rule/update_size/step_<k>`: the mean over tasks of the root mean square
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
                tf.summary.histogram("rule/weights/" + weight.name,
                                     np.asarray(weight.numpy()))
            if self.episode is not None:
                norms = np.asarray(model.inner_update_norms(self.episode))
                for k in range(norms.shape[1]):
                    name = f"rule/update_size/step_{k + 1}"
                    tf.summary.scalar(name, float(norms[:, k].mean()))
                    tf.summary.histogram(name + "/tasks", norms[:, k])
        self._writer.flush()


class LearnedStepSizeSummary(_SummaryCallback):
    """Writes the per-variable step sizes of a `LearnedOptimizer` to TensorBoard.

    At the end of each epoch, one scalar per variable,
    `learned_optimizer/step_size/<variable path>`: the step size the rule
    currently gives that variable (see `LearnedOptimizer.step_sizes`).
    Written outside the compiled step, like `InnerRateSummary`.

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

"""Keras callbacks for meta-learning runs."""

import keras
import numpy as np
import tensorflow as tf


class InnerRateSummary(keras.callbacks.Callback):
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

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = log_dir
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        rates = getattr(self.model, "inner_rate_variables", [])
        if not rates:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        adapted = self.model.adapted_variables
        with self._writer.as_default(step=epoch):
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

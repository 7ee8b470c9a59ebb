"""Callbacks that stop training: non-finite steps and wall-time limits."""

import time

import keras
import tensorflow as tf

from keras_meta import errors
from keras_meta import nonfinite
from keras_meta import validation


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
    bad stops instead of spinning. The message says whether the model's
    weights are still finite (skipped steps never change them; an applied
    step whose own inputs were finite can still overflow them, e.g. with a
    huge learning rate). It also adds the skip count to the logs (and so to TensorBoard)
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
        validation.check_positive_int("max_consecutive", max_consecutive)
        self.max_consecutive = max_consecutive

    def _counters(self):
        """(consecutive, total, step, quantity) or None if nothing counts.

        Duck-typed: a model that skips meta-steps itself has
        `skipped_steps`, `consecutive_skipped_steps` and
        `nonfinite_quantity` (an index into
        `keras_meta.errors.NONFINITE_QUANTITIES`); an optimizer that keeps
        variables has `nonfinite_count` and `consecutive_nonfinite_steps`.
        """
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
            self.model.stop_training = True
            raise errors.NonFiniteError(
                f"Training stopped at step {step}: the {quantity} was not "
                f"finite in {consecutive} consecutive steps, which were "
                f"skipped ({total} skipped updates in all; "
                f"{errors.weights_state(self._weights_finite())}). Lower the "
                "learning rates, check the data for NaN/inf, or raise the limit "
                f"(max_consecutive={self.max_consecutive}).",
                step=step, quantity=quantity)

    def _weights_finite(self):
        return bool(nonfinite.all_finite(
            [w.value for w in self.model.weights
             if tf.as_dtype(w.dtype).is_floating]))

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

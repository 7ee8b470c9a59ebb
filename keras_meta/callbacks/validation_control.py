"""`ValidationControl`: an optimizer steered by held-out loss during `fit`.

A rule that reads only the training gradients cannot tell a model that
memorizes a small training set (it wants a smaller step) from one held
back by its regularization (it wants less weight decay); held-out data
can. Every `every` steps this callback measures the validation loss and
the training loss and, when the validation loss stops improving:

- with a generalization gap (validation loss above `gap` times the
  training loss), it halves the optimizer's `learning_rate` and returns
  the model to its best-validated weights (the "newbob" schedule of
  speech recognition: reject the steps that overfit, go on more slowly);
- without one, it turns off a `LearnedOptimizer`'s learned weight decay
  (`LearnedOptimizer.scale_learned_decay`), or for any other optimizer
  halves its `learning_rate` (as `keras.callbacks.ReduceLROnPlateau`).
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras.src.utils import io_utils

from keras_meta import validation
from keras_meta.optimizers import weight_average

# `every="auto"`: this many checks over a `fit` whose length it knows
# (epochs times steps per epoch), else a check every
# `AUTO_EVERY_UNKNOWN` steps.
AUTO_CHECKS = 20
AUTO_EVERY_UNKNOWN = 250


def _as_dataset(data, batch_size, name):
    """A finite dataset of `(x, y[, sample_weight])` batches."""
    if isinstance(data, tf.data.Dataset):
        if data.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ValueError(f"`{name}` is an infinite tf.data.Dataset; "
                             "give a finite one (no `.repeat()`).")
        spec = data.element_spec
        if not (isinstance(spec, tuple) and len(spec) in (2, 3)):
            raise ValueError(f"`{name}` must yield (x, y) or (x, y, "
                             f"sample_weight) batches; got {spec}.")
        return data
    if not (isinstance(data, (tuple, list)) and len(data) in (2, 3)):
        raise ValueError(f"`{name}` must be a tuple (x, y) or (x, y, "
                         "sample_weight) of arrays, or a finite "
                         f"tf.data.Dataset of such batches; got "
                         f"{type(data).__name__}.")
    sizes = {len(tf.nest.flatten(part)[0]) for part in data}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"`{name}`'s arrays must have the same, nonzero "
                         f"number of examples; got sizes {sorted(sizes)}.")
    return tf.data.Dataset.from_tensor_slices(tuple(data)).batch(batch_size)


class ValidationControl(keras.callbacks.Callback):
    """Steers the optimizer by validation loss: smaller steps and a return
    to the best weights when the model overfits, no learned weight decay
    when it is held back.

    Every `every` optimizer steps it computes the loss (the compiled loss
    plus the model's regularization losses, in inference mode) on
    `validation_data` and on `train_data` (without it: the mean of `fit`'s
    training losses since the last check), of the averaged weights where
    the optimizer has `use_ema=True`. After `patience` checks without a
    relative improvement of `min_delta` in the validation loss:

    - validation loss above `gap` times the training loss (overfitting):
      `learning_rate` times `factor`; with `restore=True` the model's
      weights (batch-norm statistics and the weight average included, not
      the optimizer's moments) return to those of the best check;
    - otherwise: a `LearnedOptimizer` whose rule has a learned weight
      decay gets it times `decay_factor` (`scale_learned_decay`), any other
      optimizer `learning_rate` times `factor`.

    A non-finite validation loss acts at once, as overfitting does (back
    to the best weights at a lower rate); before any finite one it raises
    `FloatingPointError`.

    With `restore_best_weights=True`, a last check at the end of training
    returns the model to the best check's weights if its final weights
    validate worse (as `keras.callbacks.EarlyStopping` does).

    The changes live in the optimizer's variables, so they are saved with
    it; the best weights and the counters are not (a resumed run starts
    them afresh). `history` lists every check.

    Example (the learned optimizer with the factored second moment, the
    configuration recommended with this callback):

    ```python
    model.compile(optimizer=keras_meta.LearnedOptimizer(
        rule={"factored_second_moment": True}), loss=...)
    model.fit(dataset, epochs=1, steps_per_epoch=5000, callbacks=[
        keras_meta.callbacks.ValidationControl((x_val, y_val))])
    ```

    Args:
        validation_data: `(x, y)` or `(x, y, sample_weight)` arrays, or a
            finite `tf.data.Dataset` of such batches.
        train_data: the same for the training loss the gap is measured
            against (e.g. as many training examples as `validation_data`
            holds); None: `fit`'s running training loss.
        every: optimizer steps between checks (a check runs at the first
            batch end at or after each multiple), or "auto": a twentieth
            (`AUTO_CHECKS`) of `fit`'s `epochs` times its steps per epoch
            (250 where `fit` does not know them).
        patience: checks without improvement before acting.
        factor: multiplier in (0, 1) of the learning rate or the decay.
        gap: validation-to-training loss ratio (> 1) from which the model
            counts as overfitting.
        min_delta: relative improvement that counts, in [0, 1).
        restore: return to the best weights when lowering the rate for
            overfitting.
        decay_factor: multiplier in [0, 1) of the learned decay; 0 turns
            it off.
        restore_best_weights: at the end of training, keep the best
            check's weights where the final ones validate worse (False:
            keep the final ones).
        batch_size: batch size for arrays.
        verbose: 1 prints each action.
    """

    def __init__(self, validation_data, train_data=None, every="auto",
                 patience=2, factor=0.5, gap=2.0, min_delta=1e-3,
                 restore=True, decay_factor=0.0, restore_best_weights=True,
                 batch_size=256, verbose=0):
        super().__init__()
        if not _is_auto(every):
            try:
                validation.check_positive_int("every", every)
            except ValueError:
                raise ValueError('ValidationControl `every` must be an int '
                                 f'>= 1 or "auto"; got {every!r}.') from None
        for name, value in (("patience", patience),
                            ("batch_size", batch_size)):
            validation.check_positive_int(name, value)
        for name, value, ok, want in (
                ("factor", factor, _number(factor) and 0 < factor < 1,
                 "a number in (0, 1)"),
                ("gap", gap, _number(gap) and 1 <= gap < math.inf,
                 "a finite number >= 1"),
                ("min_delta", min_delta,
                 _number(min_delta) and 0 <= min_delta < 1,
                 "a number in [0, 1)"),
                ("decay_factor", decay_factor,
                 _number(decay_factor) and 0 <= decay_factor < 1,
                 "a number in [0, 1)")):
            if isinstance(value, bool) or not ok:
                raise ValueError(f"ValidationControl `{name}` must be {want}"
                                 f"; got {value!r}.")
        self.validation_data = validation_data
        self.train_data = train_data
        self.every = every
        self.patience = patience
        self.factor = float(factor)
        self.gap = float(gap)
        self.min_delta = float(min_delta)
        self.restore = bool(restore)
        self.decay_factor = float(decay_factor)
        self.restore_best_weights = bool(restore_best_weights)
        self.batch_size = batch_size
        self.verbose = verbose
        self._validation = _as_dataset(validation_data, batch_size,
                                       "validation_data")
        self._train = (None if train_data is None else
                       _as_dataset(train_data, batch_size, "train_data"))
        self.history = []

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        if isinstance(getattr(optimizer, "_learning_rate", None),
                      keras.optimizers.schedules.LearningRateSchedule):
            raise ValueError(
                "ValidationControl changes the optimizer's learning rate, "
                "so it needs a float `learning_rate`, not a schedule; got "
                f"{optimizer.learning_rate!r}.")
        self._best, self._bad, self._best_weights = math.inf, 0, None
        self._every = self._resolved_every()
        self._next = (_step(optimizer) // self._every + 1) * self._every
        self._loss_sum, self._loss_count = 0.0, 0
        self._loss_fns = {}

    def _resolved_every(self):
        """Steps between checks in this `fit` call."""
        if not _is_auto(self.every):
            return self.every
        params = self.params or {}
        epochs, steps = params.get("epochs"), params.get("steps")
        if not (epochs and steps):
            return AUTO_EVERY_UNKNOWN
        return max(1, epochs * steps // AUTO_CHECKS)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_sum, self._epoch_count = 0.0, 0

    def on_train_batch_end(self, batch, logs=None):
        if logs and logs.get("loss") is not None:
            # `fit` reports the epoch's mean so far; keep the sum since the
            # last check.
            total = float(logs["loss"]) * (batch + 1)
            self._loss_sum += total - self._epoch_sum
            self._loss_count += batch + 1 - self._epoch_count
            self._epoch_sum, self._epoch_count = total, batch + 1
        step = _step(self.model.optimizer)
        if step < self._next:
            return
        self._next = (step // self._every + 1) * self._every
        running = (self._loss_sum / self._loss_count if self._loss_count
                   else math.nan)
        self._loss_sum, self._loss_count = 0.0, 0
        self.check(step, running)

    def on_train_end(self, logs=None):
        if not (self.restore_best_weights and self._best_weights):
            return
        optimizer = self.model.optimizer
        with _AveragedWeights(self.model, optimizer):
            val = self._loss(self._validation)
        # NaN compares False: non-finite final weights are replaced too.
        action = None if val <= self._best else "restore_best"
        if action:
            self._restore_best()
        self.history.append({
            "step": _step(optimizer), "val_loss": val,
            "train_loss": math.nan, "action": action,
            "learning_rate": float(optimizer.learning_rate.numpy())})
        if action and self.verbose:
            io_utils.print_msg(
                f"\nValidationControl end of training: back to the best "
                f"weights (validation loss {self._best:.4g}, final {val:.4g}).")

    def check(self, step, running_train_loss=math.nan):
        """One check at optimizer step `step`: measure, then act if the
        validation loss has not improved for `patience` checks. Returns
        the history entry."""
        model, optimizer = self.model, self.model.optimizer
        with _AveragedWeights(model, optimizer):
            val = self._loss(self._validation)
            train = (running_train_loss if self._train is None
                     else self._loss(self._train))
            finite = math.isfinite(val)
            if finite and val < self._best * (1.0 - self.min_delta):
                self._best, self._bad = val, 0
                self._best_weights = _copy(model.weights)
            else:
                self._bad += 1
        if not finite and self._best_weights is None:
            raise FloatingPointError(
                f"ValidationControl: validation loss {val} at step {step}, "
                "before any finite one to return to; the model's weights "
                "are not finite.")
        action = None
        # A non-finite validation loss counts as overfitting at once: back
        # to the best weights at a lower rate.
        if not finite or self._bad >= self.patience:
            self._bad = 0
            action = self._act(val, train)
        entry = {"step": step, "val_loss": val, "train_loss": train,
                 "action": action,
                 "learning_rate": float(optimizer.learning_rate.numpy())}
        self.history.append(entry)
        if action and self.verbose:
            io_utils.print_msg(
                f"\nValidationControl step {step}: {action} (validation "
                f"loss {val:.4g}, training loss {train:.4g}).")
        return entry

    def _act(self, val, train):
        optimizer = self.model.optimizer
        overfits = not val <= self.gap * train  # NaN training loss: overfits
        scale_decay = getattr(optimizer, "scale_learned_decay", None)
        if not overfits and scale_decay is not None and getattr(
                optimizer, "has_learned_decay", False):
            scale_decay(self.decay_factor)
            return "decay"
        optimizer.learning_rate.assign(optimizer.learning_rate * self.factor)
        if not (overfits and self.restore and self._best_weights):
            return "learning_rate"
        self._restore_best()
        return "learning_rate+restore"

    def _restore_best(self):
        """The best check's weights (batch-norm statistics included) into
        the model and the optimizer's weight averages."""
        for variable, value in zip(self.model.weights, self._best_weights):
            variable.assign(value)
        weight_average.reset_to_weights(self.model.optimizer,
                                        self.model.trainable_variables)

    def _loss(self, dataset):
        """Mean loss over `dataset`, by a function traced once per element
        spec (batch dimension unknown, so the last, smaller batch does not
        trace again)."""
        spec = dataset.element_spec
        key = repr(spec)
        if key not in self._loss_fns:
            model = self.model

            @tf.function(input_signature=[spec])
            def batch_loss(batch):
                x, y, weights = keras.utils.unpack_x_y_sample_weight(batch)
                y_pred = model(x, training=False)
                loss = model.compute_loss(x=x, y=y, y_pred=y_pred,
                                          sample_weight=weights,
                                          training=False)
                size = tf.shape(tf.nest.flatten(y)[0])[0]
                return tf.cast(loss, tf.float64), size
            self._loss_fns[key] = batch_loss
        total, count = 0.0, 0
        for batch in dataset:
            loss, size = self._loss_fns[key](batch)
            total += float(loss) * int(size)
            count += int(size)
        return total / count if count else math.nan


def _step(optimizer):
    """The optimizer's step count (also a distributed variable's)."""
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


def _is_auto(value):
    return isinstance(value, str) and value == "auto"


def _number(x):
    return isinstance(x, (int, float, np.floating, np.integer))


def _copy(variables):
    return [tf.identity(v.value) for v in variables]


class _AveragedWeights:
    """Within: the model's trainable weights are the optimizer's averages
    (where it keeps them); on exit, the training weights come back."""

    def __init__(self, model, optimizer):
        self.variables = model.trainable_variables
        self.values = weight_average.averaged_values(optimizer,
                                                     self.variables)

    def __enter__(self):
        if self.values:
            self.saved = _copy(self.variables)
            for variable, value in zip(self.variables, self.values):
                variable.assign(value)

    def __exit__(self, *exc):
        if self.values:
            for variable, value in zip(self.variables, self.saved):
                variable.assign(value)

"""Which of MAML's constructor settings may change on a built model.

A MAML's steps read its settings when Keras traces them, so a setting
changed on a built model would otherwise be ignored by the functions
traced before: silently, the old value. Two kinds of settings:

- `CHANGEABLE_SETTINGS` may change: the value is checked as the
  constructor checks it and every traced function (training, evaluation,
  prediction, adaptation) is dropped, so the next call traces again with
  it;
- the others (`FIXED_SETTINGS`) size variables or are compiled into the
  training step: changing one raises, saying how to get a model with
  another value.
"""

from keras_meta import validation
from keras_meta.maml import checks

CHANGEABLE_SETTINGS = ("eval_inner_steps", "inner_guard")
FIXED_SETTINGS = (
    "model", "inner_learning_rate", "inner_steps", "first_order",
    "inner_optimizer", "multi_step_loss", "multi_step_loss_anneal_steps",
    "adapted_layers", "transductive", "task_parallelism",
    "max_consecutive_skips", "track_pre_adaptation", "zeroed_layers")


class Settings:
    """Mixin of `MAML`: guards its settings once it is built."""

    def __setattr__(self, name, value):
        if not self.__dict__.get("built"):  # still in the constructor
            super().__setattr__(name, value)
        elif name in FIXED_SETTINGS:
            raise AttributeError(
                f"`{name}` is fixed once a {type(self).__name__} is built "
                "(it sizes variables or is compiled into the training "
                f"step); got a new value {value!r}. Build a new "
                f"{type(self).__name__} with it around the same network "
                "(the meta-learned weights are the network's).")
        elif name in CHANGEABLE_SETTINGS:
            super().__setattr__(name, _checked(name, value))
            # A new eval step count also needs `compile()` again, for its
            # per-step metrics.
            self._trace_again()
        else:
            super().__setattr__(name, value)

    def _trace_again(self):
        """Drops every traced function (training, evaluation, prediction,
        adaptation), so the next call traces with the current settings."""
        self.__dict__.pop("_km_compiled_fns", None)
        self.train_function = self.test_function = None
        self.predict_function = None


def _checked(name, value):
    if name == "inner_guard":
        return checks.inner_guard(value)
    validation.check_positive_int(name, value, allow_none=True)
    return value

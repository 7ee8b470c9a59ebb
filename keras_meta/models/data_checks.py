"""Checks of episode data against a model and its loss, before compiling.

A mismatch between data and model shows up inside a compiled step as an
obscure shape error, or worse, as silent broadcasting (an `mse` between
[n, 1] predictions and [n] targets averages an n x n matrix) or NaN losses
(a label past the last logit). These checks run eagerly on the first batch,
so the user gets one `ValueError` that says what was given and what was
expected.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_meta.data.episode import validate_episode

LOSS_KINDS = ("sparse", "categorical", "binary", "regression", "other")
_REGRESSION = ("mean_squared", "mse", "mean_absolute", "mae", "huber",
               "log_cosh", "logcosh", "squared_log")


def loss_kind(loss_name):
    """The kind of target a loss expects, from its name."""
    name = loss_name.lower()
    if "sparse" in name:
        return "sparse"
    if "categorical" in name:
        return "categorical"
    if "binary" in name:
        return "binary"
    if any(key in name for key in _REGRESSION):
        return "regression"
    return "other"


def first_episode(data):
    """The first episode batch of `fit`/`evaluate` data, or None.

    Datasets are peeked at (their first element is computed once more
    later; episode streams are stateless, so nothing shifts). Other inputs
    (generators, distributed datasets) are not checked here.
    """
    if isinstance(data, tuple) and data and all(d is None for d in data[1:]):
        data = data[0]
    if isinstance(data, tf.data.Dataset):
        if not isinstance(data.element_spec, dict):
            return data.element_spec
        return next(iter(data.take(1)))
    if isinstance(data, dict):
        return data
    return None


def _dims(shape):
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def check_episode(episode, model, kind, where="episode"):
    """Raises `ValueError` if `episode` does not fit `model` and the loss.

    Args:
        episode: an episode dict with a task axis (tensors or arrays).
        model: the wrapped Keras model.
        kind: one of `LOSS_KINDS` (see `loss_kind`).
        where: a name for the data in messages.
    """
    validate_episode(episode, where)
    support_x = episode["support_x"]
    input_shape = None
    if getattr(model, "inputs", None):
        input_shape = tuple(model.inputs[0].shape)
        given = tuple(support_x.shape[1:])
        if len(given) != len(input_shape) or any(
                a is not None and b is not None and a != b
                for a, b in zip(input_shape[1:], given[1:])):
            raise ValueError(
                f"{where}: the model takes inputs of shape "
                f"{_dims(input_shape)} per example, so 'support_x' should "
                f"be [tasks, examples, {_dims(input_shape[1:])[1:-1]}]; got "
                f"shape {tuple(support_x.shape)}.")
    example = keras.KerasTensor((None,) + tuple(support_x.shape[2:]),
                                dtype=support_x.dtype.name
                                if hasattr(support_x.dtype, "name")
                                else str(support_x.dtype))
    output_shape = tuple(model.compute_output_spec(example).shape)
    _check_targets(episode, output_shape, kind, where)


def _check_targets(episode, output_shape, kind, where):
    targets = {key: np.asarray(episode[key])
               for key in ("support_y", "query_y")
               if not isinstance(episode[key], tf.TensorSpec)}
    target_shape = tuple(episode["support_y"].shape[2:])
    units = output_shape[-1]
    if kind == "sparse":
        if units == 1:
            raise ValueError(
                f"{where}: the loss is a sparse categorical crossentropy (a "
                "classification loss) but the model gives 1 output per "
                "example, like a regression model. Use a regression loss "
                "such as 'mse', or give the model one output per class.")
        if target_shape not in ((), (1,)):
            raise ValueError(
                f"{where}: a sparse categorical loss takes one class index "
                f"per example (targets [tasks, examples]); got targets of "
                f"shape {tuple(episode['support_y'].shape)}.")
        labels = np.concatenate([t.reshape(-1) for t in targets.values()]
                                ) if targets else np.zeros(0)
        if labels.size and np.any(labels != np.round(labels)):
            raise ValueError(
                f"{where}: the loss is a classification loss but the "
                f"targets are not class indices (e.g. {labels[labels != np.round(labels)][0]:g}):"
                " regression targets need a regression loss such as 'mse'.")
        if labels.size and (labels.min() < 0 or labels.max() >= units):
            raise ValueError(
                f"{where}: labels must be in 0..{units - 1} (the model has "
                f"{units} outputs); got labels from {int(labels.min())} to "
                f"{int(labels.max())}.")
        if labels.size and units is not None:
            ways = int(labels.max()) + 1
            if ways != units:
                raise ValueError(
                    f"{where}: the episodes are {ways}-way (labels 0.."
                    f"{ways - 1}) but the model has {units} outputs; build "
                    f"the model with ways={ways} outputs.")
    elif kind in ("categorical", "binary", "regression"):
        if target_shape != output_shape[1:]:
            what = "one-hot targets" if kind == "categorical" else "targets"
            raise ValueError(
                f"{where}: the model outputs {_dims(output_shape[1:])} per "
                f"example but the {what} are {_dims(target_shape)} per "
                "example; the loss would broadcast them against each "
                "other. Give targets of the model's output shape.")

"""Checks of MAML's arguments and data, raised before anything compiles.

A mismatch between data and model shows up inside a compiled step as an
obscure shape error, or worse, as silent broadcasting (an `mse` between
[n, 1] predictions and [n] targets averages an n x n matrix) or NaN losses
(a label past the last logit). These checks run eagerly (on the first
batch for `fit`, `evaluate` and `predict`; on the support set for
`adapt`), so the user gets one `ValueError` that says what was given and
what was expected.
"""

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from keras_meta import distribute as km_distribute
from keras_meta import validation
from keras_meta.data.episode import EPISODE_KEYS
from keras_meta.data.episode import validate_episode

LOSS_KINDS = ("sparse", "categorical", "binary", "regression", "other")
_REGRESSION = ("mean_squared", "mse", "mean_absolute", "mae", "huber",
               "log_cosh", "logcosh", "squared_log")


# ---------------------------------------------------------------- arguments


def check_model(model):
    """Raises unless `model` is a built Keras model with trainable weights,
    created in the current distribution scope."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`model` must be a keras.Model; got {type(model).__name__}.")
    if not model.built:
        raise ValueError(
            "`model` must be built before it is wrapped in MAML, e.g. "
            "start a Sequential model with keras.Input(shape) or call it "
            "once on a batch.")
    if not model.trainable_variables:
        raise ValueError(
            f"`model` {model.name!r} has no trainable variables: there is "
            "nothing for MAML to adapt or meta-learn.")
    km_distribute.check_created_in_scope(model)


def check_arguments(inner_learning_rate, inner_steps, eval_inner_steps,
                    multi_step_loss_anneal_steps, max_consecutive_skips,
                    task_parallelism, choices):
    """Raises on a bad numeric argument of `MAML` or an unknown
    `task_parallelism` (one of `choices`)."""
    validation.check_non_negative_float("inner_learning_rate",
                                        inner_learning_rate)
    validation.check_positive_int("inner_steps", inner_steps)
    validation.check_positive_int("eval_inner_steps", eval_inner_steps, True)
    validation.check_positive_int("multi_step_loss_anneal_steps",
                       multi_step_loss_anneal_steps)
    validation.check_positive_int("max_consecutive_skips", max_consecutive_skips, True)
    if task_parallelism not in choices:
        raise ValueError(
            f"`task_parallelism` must be one of {choices}; got "
            f"{task_parallelism!r}.")


def inner_guard(value):
    """`value` as MAML's `inner_guard` (None or a float); raises
    `ValueError` unless it is None or a real number > 0 (inf allowed)."""
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or math.isnan(value) or value <= 0):
        raise ValueError(
            "`inner_guard` must be None or a number > 0 (the factor over "
            "a task's support loss before adaptation above which an inner "
            f"step is undone; inf: only non-finite losses); got {value!r}.")
    return float(value)


def pre_adaptation_interval(track):
    """Meta-steps between pre-adaptation passes in `fit` (0: never)."""
    if isinstance(track, bool):
        return int(track)
    if isinstance(track, numbers.Integral) and track >= 1:
        return int(track)
    raise ValueError(
        "`track_pre_adaptation` must be a bool or an int >= 1 (run the "
        f"pass on every N-th meta-step); got {track!r}.")


def last_layer_with_weights(model):
    """Name of the last layer of `model` that has trainable weights."""
    layers = [l for l in model._flatten_layers(include_self=False)
              if l.trainable_weights and not l._flatten_layers(include_self=False)]
    if not layers:
        raise ValueError(f"Model {model.name!r} has no layer with weights.")
    return layers[-1].name


def adapted_indices(model, layer_names, argument="adapted_layers"):
    """Indices into `model.trainable_variables` of the variables of the
    layers named `layer_names` (all of them for None); raises on a name
    that is not a layer with trainable weights, naming `argument`."""
    variables = model.trainable_variables
    if layer_names is None:
        return list(range(len(variables)))
    layers = {layer.name: layer for layer in model._flatten_layers()}
    indices = []
    for name in layer_names:
        if name not in layers:
            known = [n for n, l in layers.items() if l.trainable_weights]
            raise ValueError(
                f"`{argument}` names {name!r}, which is not a layer "
                f"of {model.name!r}; layers with weights: {known}.")
        ids = {id(v) for v in layers[name].trainable_variables}
        if not ids:
            raise ValueError(
                f"`{argument}` names {name!r}, which has no "
                "trainable variables.")
        indices += [i for i, v in enumerate(variables) if id(v) in ids]
    return sorted(set(indices))


def zero_layers(model, zeroed, adapted, adapted_layers):
    """Resolves `MAML`'s `zeroed_layers` (None, True for the last layer
    with trainable weights, or layer names) to `(names or None, indices
    into model.trainable_variables)`, checks that those layers adapt
    (`adapted`: the adapted indices) and sets their variables to zero."""
    if zeroed is None or zeroed is False:
        return None, []
    if zeroed is True:
        zeroed = [last_layer_with_weights(model)]
    if isinstance(zeroed, str) or not all(
            isinstance(name, str) for name in zeroed):
        raise ValueError(
            "`zeroed_layers` must be None, True or a list of layer names; "
            f"got {zeroed!r}.")
    indices = adapted_indices(model, list(zeroed), "zeroed_layers")
    if set(indices) - set(adapted):
        raise ValueError(
            f"`zeroed_layers` {list(zeroed)} must adapt in the inner loop "
            f"(else they stay zero); `adapted_layers` is {adapted_layers}.")
    for i in indices:
        variable = model.trainable_variables[i]
        variable.assign(tf.zeros(variable.shape, variable.dtype))
    return list(zeroed), indices


def check_learning_rate(optimizer):
    """Raises if the meta-optimizer's learning rate is < 0, NaN or inf
    (an infinite rate turns the weights into inf and NaN in one step, even
    from finite gradients). A schedule is checked at the optimizer's
    current step (Keras's `learning_rate` evaluates it there)."""
    rate = getattr(optimizer, "learning_rate", None)
    if rate is None or callable(rate):  # no value to read before a step
        return
    value = float(keras.ops.convert_to_numpy(rate))
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(
            "The meta-optimizer's learning rate must be a finite number >= "
            f"0; got {value:g} "
            f"({type(optimizer).__name__}).")


def require_compiled(maml, what):
    """Raises unless `maml` is compiled (its loss is needed)."""
    if not maml.compiled:
        raise ValueError(
            f"Call compile() (for its loss) before {what}(); a loaded "
            "MAML model is compiled if it was saved compiled.")


# --------------------------------------------------------------------- data


def episode_of(data):
    """The episode dict of a Keras step's `data`, validated.

    `train_on_batch` and friends pack x as `(x,)` or `(x, None, None)`.
    """
    if isinstance(data, tuple) and all(d is None for d in data[1:]):
        data = data[0]
    validate_episode(data)
    return {key: data[key] for key in EPISODE_KEYS}


def _input_shape(model):
    """The model's input shape (with the batch axis), or None if unknown."""
    if getattr(model, "inputs", None):
        return tuple(model.inputs[0].shape)
    return None


def check_support(model, support_x, support_y, kind):
    """Raises unless `(support_x, support_y)` is one task's support set for
    `model` (no task axis), as `MAML.adapt` takes it: the shapes, at least
    one example, finite values, and the targets the checks of `fit` accept
    for the loss `kind` (`check_episode`)."""
    input_shape = _input_shape(model)
    if input_shape is not None and (
            len(support_x.shape) != len(input_shape)
            or any(a is not None and a != b
                   for a, b in zip(input_shape[1:], support_x.shape[1:]))):
        raise ValueError(
            "adapt() takes one task's support set without a task axis: "
            f"support_x should have shape [n, {', '.join(map(str, input_shape[1:]))}]"
            f" for this model; got shape {tuple(support_x.shape)}.")
    if len(support_y.shape) < 1 or support_x.shape[0] != support_y.shape[0]:
        raise ValueError(
            "support_x and support_y must have the same number of "
            f"examples; got shapes {tuple(support_x.shape)} and "
            f"{tuple(support_y.shape)}.")
    task = {"support_x": support_x[None], "support_y": support_y[None],
            "query_x": support_x[None], "query_y": support_y[None]}
    check_episode(task, model, kind, "adapt() support set",
                  finite_keys=("support_x", "support_y"))


def check_finite(episode, keys, where):
    """Raises if a floating-point array of `episode[key]` for `keys` holds
    NaN or inf (tensor specs, whose values are unknown, pass)."""
    for key in keys:
        value = episode[key]
        if isinstance(value, tf.TensorSpec):
            continue
        array = np.asarray(value)
        if array.dtype.kind != "f":
            continue
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ValueError(
                f"{where}: '{key}' holds {bad} non-finite value(s) (NaN or "
                f"inf) out of {array.size}; adapting to it, or predicting "
                "on it, gives non-finite weights or predictions. Remove or "
                "repair them.")


def _check_not_empty(episode, where):
    for key in ("support_x", "query_x"):
        examples = episode[key].shape[1]
        if examples is not None and examples == 0:
            raise ValueError(
                f"{where}: '{key}' holds no examples (shape "
                f"{tuple(episode[key].shape)}); every task needs at least "
                "one support and one query example.")


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


def validate_data(data, model, kind, where, finite_keys=()):
    """Checks the first episode batch of `fit`/`evaluate`/`predict` data
    (see `first_episode`) against `model` and the loss `kind`, eagerly
    (`check_episode`)."""
    if data is None:
        return
    episode = first_episode(data)
    if episode is not None:
        check_episode(episode, model, kind, where, finite_keys)


def _dims(shape):
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def check_episode(episode, model, kind, where="episode", finite_keys=()):
    """Raises `ValueError` if `episode` does not fit `model` and the loss.

    The one set of data checks of `fit`, `evaluate`, `predict` and `adapt`:
    the structure, at least one support and one query example per task,
    the input shape, and targets that fit the loss (class indices in range
    and as many ways as outputs; regression targets of the output shape,
    which would otherwise broadcast).

    Args:
        episode: an episode dict with a task axis (tensors or arrays).
        model: the wrapped Keras model.
        kind: one of `LOSS_KINDS` (see `loss_kind`).
        where: a name for the data in messages.
        finite_keys: keys whose values must be finite (`predict` and
            `adapt`, which return adapted results; `fit` skips and counts
            a non-finite step instead).
    """
    validate_episode(episode, where)
    _check_not_empty(episode, where)
    check_finite(episode, finite_keys, where)
    support_x = episode["support_x"]
    input_shape = _input_shape(model)
    if input_shape is not None:
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

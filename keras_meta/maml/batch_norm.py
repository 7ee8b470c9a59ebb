"""Batch normalization in MAML: exact second derivatives of the batch
statistics, and the moving statistics as a mean over tasks.

`tf.nn.moments`, which Keras's `BatchNormalization` calls on the TensorFlow
backend, computes the variance around `tf.stop_gradient(mean)`. That leaves
the first derivative exact (the stopped term's gradient is zero at the mean)
but drops a term of the second derivative, so second-order MAML through a
batch-normalized network would get a wrong meta-gradient (the tests check
it against finite differences in float64). Inside
`exact_moments()`, Keras computes the variance around the mean itself: the
same values, with exact derivatives of every order. MAML enters it around
each forward pass of the wrapped model.

During meta-training each task's query pass computes its own batch
statistics; `state_after_step` turns them into the layers' new moving
statistics (their mean over tasks, and over replicas under a strategy).

MAML++'s per-step batch norm (`StepBatchNorm`) gives every inner step its
own batch-norm weights and moving statistics, held by the MAML model.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from keras_meta import distribute as km_distribute

try:
    from keras.src.backend.tensorflow import nn as _keras_tf_nn
except ImportError:  # another Keras layout: nothing to patch
    _keras_tf_nn = None


def moments(x, axes, keepdims=False):
    """Mean and (biased) variance of `x` over `axes`, differentiable to any
    order."""
    mean = tf.reduce_mean(x, axes, keepdims=True)
    variance = tf.reduce_mean(tf.math.squared_difference(x, mean), axes,
                              keepdims=True)
    if not keepdims:
        mean = tf.squeeze(mean, axes)
        variance = tf.squeeze(variance, axes)
    return mean, variance


@contextlib.contextmanager
def exact_moments():
    """Makes Keras's TensorFlow `moments` use `moments` above while traced
    code runs inside this block (not thread-safe: tracing is serial)."""
    original = getattr(_keras_tf_nn, "_compute_moments", None)
    if original is None:
        yield
        return
    _keras_tf_nn._compute_moments = moments
    try:
        yield
    finally:
        _keras_tf_nn._compute_moments = original


def state_after_step(stacked_state):
    """Non-trainable values after a meta-step, from each task's values
    stacked on a leading axis: floats (moving statistics) are the mean over
    tasks (over all replicas' tasks under a strategy); others (e.g. a
    dropout seed) any task's value."""
    ctx = tf.distribute.get_replica_context()
    values = []
    for value in stacked_state:
        if value.dtype.is_floating:
            value = tf.reduce_mean(value, axis=0)
            if tf.distribute.has_strategy() and ctx is not None:
                value = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, value)
            values.append(value)
        else:
            values.append(value[0])
    return values


def assign_state(variables, values):
    """Assigns `values` to `variables` (MAML's `_state_variables()`), on
    every replica."""
    for variable, value in zip(variables, values):
        km_distribute.assign_replicated(variable, value)


def _tiled(value, steps):
    """A Keras initializer: `value` repeated on a new leading axis."""
    array = np.asarray(keras.ops.convert_to_numpy(value))

    def initializer(shape, dtype=None):
        return keras.ops.cast(np.broadcast_to(array, shape), dtype)

    return initializer


class StepBatchNorm:
    """MAML++'s per-step batch normalization (Antoniou et al., 2019).

    For every `keras.layers.BatchNormalization` of the wrapped model, the
    MAML model holds one set of batch-norm weights (gamma, beta: "BNWB")
    and/or of moving statistics (mean, variance: "BNRS") per inner step,
    shape `[steps, *shape]`, initialized from the layer's own. The forward
    pass at inner step k (the support pass before update k + 1, and the
    query pass after k + 1 updates, as in MAML++) uses row
    `min(k, steps - 1)` in place of the layer's own values, so evaluation
    with more steps reuses the last row. Per-step weights are meta-learned
    (the inner loop does not adapt them, MAML++'s default). Per-step
    statistics follow section 3.2's rule: each query pass's new statistics
    replace its row, and a meta-step keeps the mean over tasks; the
    layer's own statistics end as those of the last pass, so a model from
    `adapt` holds the last trained step's.

    Args:
        model: the wrapped, built Keras model.
        steps: the number of rows (MAML's `inner_steps`).
        statistics: keep per-step moving statistics.
        weights: keep per-step gamma and beta.
    """

    def __init__(self, model, steps, statistics, weights):
        self.steps = steps
        trainable = {id(v): i for i, v in enumerate(model.trainable_variables)}
        state = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
        self.weight_indices, self.state_indices = [], []
        self._names = {}  # stable across save and load, unlike paths
        for layer in model._flatten_layers():
            if not isinstance(layer, keras.layers.BatchNormalization):
                continue
            for v in (layer.gamma, layer.beta, layer.moving_mean,
                      layer.moving_variance):
                if v is not None:
                    self._names[id(v)] = f"per_step_{layer.name}_{v.name}"
            if weights:
                self.weight_indices += [
                    trainable[id(v)] for v in (layer.gamma, layer.beta)
                    if v is not None and id(v) in trainable]
            if statistics:
                self.state_indices += [
                    state[id(v)] for v in (layer.moving_mean,
                                           layer.moving_variance)]
        self.state_offset = len(model.non_trainable_variables)
        self.weights, self.statistics = [], []

    def __bool__(self):
        return bool(self.weight_indices or self.state_indices)

    def build(self, owner, model):
        """Creates the per-step variables on `owner` (the MAML model)."""
        for indices, source, out, trainable in (
                (self.weight_indices, model.trainable_variables,
                 self.weights, True),
                (self.state_indices, model.non_trainable_variables,
                 self.statistics, False)):
            for i in indices:
                variable = source[i]
                out.append(owner.add_weight(
                    shape=(self.steps,) + tuple(variable.shape),
                    initializer=_tiled(variable, self.steps),
                    dtype=variable.dtype, trainable=trainable,
                    name=self._names[id(variable)]))

    def _row(self, index):
        return min(max(index, 0), self.steps - 1)

    def _weights_at(self, params, step_weights, row):
        params = list(params)
        for i, weight in zip(self.weight_indices, step_weights):
            params[i] = weight[row]
        return params

    def values_at(self, params, state, step_weights, index):
        """`(params, model_state)` for the pass at inner step `index`:
        the model's values with the step's rows in place of the layers'.
        `state` is MAML's state list (the model's, then the per-step
        statistics)."""
        row = self._row(index)
        params = self._weights_at(params, step_weights, row)
        model_state = list(state[:self.state_offset])
        for i, stats in zip(self.state_indices,
                            state[self.state_offset:]):
            model_state[i] = stats[row]
        return params, model_state

    def state_after_pass(self, state, new_model_state, index):
        """MAML's state after the pass at `index`: the model's new values,
        and the per-step statistics with that step's row replaced by the
        pass's new statistics."""
        row = self._row(index)
        rows = []
        for i, stats in zip(self.state_indices, state[self.state_offset:]):
            rows.append(tf.concat(
                [stats[:row], new_model_state[i][None], stats[row + 1:]], 0))
        return list(new_model_state) + rows

    def weights_after(self, params, step_weights, steps):
        """`params` with the layers' weights replaced by those of the query
        pass after `steps` steps (what a model from `adapt` holds)."""
        return self._weights_at(params, step_weights, self._row(steps - 1))

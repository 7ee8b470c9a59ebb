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
"""

import contextlib

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


def assign_state(model, values):
    """Assigns `values` to `model.non_trainable_variables`, on every
    replica."""
    for variable, value in zip(model.non_trainable_variables, values):
        km_distribute.assign_replicated(variable, value)

"""Batch-norm statistics whose second derivatives are exact.

`tf.nn.moments`, which Keras's `BatchNormalization` calls on the TensorFlow
backend, computes the variance around `tf.stop_gradient(mean)`. That leaves
the first derivative exact (the stopped term's gradient is zero at the mean)
but drops a term of the second derivative, so second-order MAML through a
batch-normalized network got a wrong meta-gradient (found by comparing with
the PyTorch peer, then confirmed by finite differences in float64; see
BUILD_NOTES.md). Inside `exact_moments()`, Keras computes the variance
around the mean itself: the same values, with exact derivatives of every
order. MAML enters it around each forward pass of the wrapped model.
"""

import contextlib

import tensorflow as tf

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

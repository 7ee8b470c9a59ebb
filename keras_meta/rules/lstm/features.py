"""The rule's inputs: gradient preprocessing, Adam's moments, and the
scale-free statistics of the per-tensor rule."""

import math

from keras import ops


def preprocess(x, p=10.0):
    """The paper's gradient preprocessing, stacked on a new last axis.

    Returns `(log|x|/p, sign x)` where `|x| >= exp(-p)` and `(-1, exp(p) x)`
    elsewhere; shape `x.shape + (2,)`. Finite for every finite `x`, and its
    derivative is finite too (the log sees at least `exp(-p)`).
    """
    absx = ops.abs(x)
    threshold = math.exp(-p)
    big = ops.greater_equal(absx, threshold)
    log_part = ops.log(ops.maximum(absx, threshold)) / p
    f1 = ops.where(big, log_part, -ops.ones_like(x))
    f2 = ops.where(big, ops.sign(x), x * math.exp(p))
    return ops.stack([f1, f2], axis=-1)


def adam_moments(g, state, config):
    """Adam's moments of flat `g`: returns (t, m, v, m_hat, v_hat, denom)."""
    b1, b2 = config.beta_1, config.beta_2
    t = state["t"] + 1.0
    m = b1 * ops.reshape(state["m"], (-1,)) + (1.0 - b1) * g
    v = b2 * ops.reshape(state["v"], (-1,)) + (1.0 - b2) * ops.square(g)
    # beta ** t as exp(t log beta): log taken in Python double precision.
    m_hat = m / (1.0 - ops.exp(t * math.log(b1)))
    v_hat = v / (1.0 - ops.exp(t * math.log(b2)))
    return t, m, v, m_hat, v_hat, ops.sqrt(v_hat) + config.epsilon


def finite_or_zero(x):
    """`x` where finite, else 0 (e.g. a feature whose sums overflowed)."""
    # Overflowing sums (gradients beyond ~1e19) give a 0 feature, not NaN.
    return ops.where(ops.isfinite(x), x, ops.zeros_like(x))


def cosine(a, b):
    """The cosine of two flat tensors; 0 where it is not finite."""
    # sqrt(sum x^2 + tiny): a finite derivative at x = 0.
    norms = ops.sqrt((ops.sum(ops.square(a)) + 1e-30) *
                     (ops.sum(ops.square(b)) + 1e-30))
    return finite_or_zero(ops.sum(a * b) / norms)


def tensor_features(g, m_old, v_old, nominal, v_hat, is_vector, offset):
    """The per-tensor rule's LSTM inputs, a vector of NUM_TENSOR_FEATURES.

    All are invariant to the scale of the loss, so one phi suits models
    whose gradients differ by orders of magnitude:

    1. cos(g_t, d_{t-1}), d = m / sqrt(v) the previous Adam direction: the
       normalized hypergradient of the log learning rate (Baydin et al.,
       2018): positive when the last step was too short.
    2. cos(g_t, m_{t-1}): agreement with the momentum.
    3. log mean |m_hat / sqrt(v_hat)|: Adam's signal-to-noise ratio, near 0
       while gradients are consistent, about -1.5 when noise dominates.
    4. log(rms g_t / mean sqrt(v_hat)), clipped to [-5, 5]: the gradient's
       size against its running average (negative as it shrinks).
    5. the current log learning-rate offset / 4.
    6. 1 for vectors (biases, scales), 0 for kernels.
    """
    prev_dir = m_old / (ops.sqrt(v_old) + 1e-12)
    snr = ops.log(ops.mean(ops.abs(nominal)) + 1e-8)
    ratio = finite_or_zero(
        0.5 * ops.log(ops.mean(ops.square(g)) + 1e-30)
        - ops.log(ops.mean(ops.sqrt(v_hat)) + 1e-30))
    return ops.stack([
        cosine(g, prev_dir),
        cosine(g, m_old),
        snr,
        ops.clip(ratio, -5.0, 5.0),
        offset / 4.0,
        ops.convert_to_tensor(1.0 if is_vector else 0.0, g.dtype),
    ])

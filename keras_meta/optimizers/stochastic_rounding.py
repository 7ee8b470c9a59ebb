"""float32 to bfloat16 with stochastic rounding, for optimizer state kept in
half the memory.

Rounding to nearest would stall an average whose step is smaller than half
a bfloat16 ulp (2**-9 of its value: a decay-0.99 momentum stops moving
while the gradient is within 20% of it). Rounding up with probability
equal to the discarded fraction is unbiased, so the average follows its
float32 value in expectation; an average with decay `b` carries an error
of about `ulp / (2 * sqrt(1 - b**2))` (3.5 ulps at 0.99), which is why
only fast averages are stored this way
(`rules.normalized.NormalizedConfig.bfloat16_momenta`).

The random bits are a hash of the element's index and a per-call seed, not
a random generator's: the same inputs round the same way, eagerly and
under XLA, with no generator state to save or to synchronize.
"""

import tensorflow as tf


def _mix(x):
    """A 32-bit integer hash (Wellons's `lowbias32`): every input bit
    changes about half the output bits."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def to_bfloat16(x, seed):
    """`x` (float32) rounded to bfloat16 stochastically: up in magnitude with
    probability equal to the fraction of a bfloat16 ulp it is above the
    value below, so `E[to_bfloat16(x)] = x`. Values that are already
    bfloat16 are unchanged. `seed` (an integer scalar, e.g. the step and
    slot) picks the random bits; the same `x` and `seed` give the same
    result."""
    x = tf.convert_to_tensor(x)
    if x.dtype != tf.float32:
        raise ValueError(
            f"to_bfloat16 rounds float32 values; got dtype {x.dtype.name}.")
    seed = _mix(tf.cast(tf.cast(seed, tf.int64) % (1 << 32), tf.uint32)
                * tf.constant(0x9E3779B9, tf.uint32))
    index = tf.cast(tf.range(tf.size(x, out_type=tf.int32)), tf.uint32)
    bits = tf.bitwise.bitwise_and(_mix(tf.reshape(index, tf.shape(x)) + seed),
                                  tf.constant(0xFFFF, tf.uint32))
    # float32 bits are sign and magnitude: adding to the low 16 bits of the
    # magnitude and truncating them rounds the magnitude up with the
    # probability of the truncated fraction (a carry moves the exponent).
    rounded = tf.bitwise.bitwise_and(tf.bitcast(x, tf.uint32) + bits,
                                     tf.constant(0xFFFF0000, tf.uint32))
    return tf.cast(tf.bitcast(rounded, tf.float32), tf.bfloat16)

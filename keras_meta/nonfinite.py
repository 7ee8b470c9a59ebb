"""The non-finite policy, once: detect, skip the step, count it.

Every trainer in the package (MAML's meta-step, `LearnedOptimizer`'s
per-variable update, the learned-optimizer meta-trainer) follows the same
policy: a step whose inputs or results are not finite is not applied, is
counted, and after a number of such steps in a row training stops with a
`keras_meta.errors.NonFiniteError` that names the first non-finite
quantity. These helpers are traceable (usable inside `tf.function` and
XLA).
"""

import tensorflow as tf


def all_finite(tensors):
    """A boolean scalar tensor: every element of every tensor is finite.

    Args:
        tensors: a nest of tensors (None entries are ignored).
    """
    flat = [t for t in tf.nest.flatten(tensors) if t is not None]
    if not flat:
        return tf.constant(True)
    return tf.reduce_all(
        tf.stack([tf.reduce_all(tf.math.is_finite(t)) for t in flat]))


def first_nonfinite(groups):
    """The 1-based index of the first group that is not all finite, else 0.

    Args:
        groups: a list of nests of tensors, in the order of precedence.

    Returns:
        An int32 scalar tensor (0: everything finite).
    """
    index = tf.constant(0, tf.int32)
    # Reversed, so that the earliest group that fails wins.
    for position, group in reversed(list(enumerate(groups, start=1))):
        index = tf.where(all_finite(group), index, position)
    return index


def keep_if_finite(ok, new, old):
    """`new` where `ok`, else `old`, elementwise over matching nests."""
    return tf.nest.map_structure(lambda n, o: tf.where(ok, n, o), new, old)


def consecutive_count(count, bad):
    """The count of non-finite steps in a row after a step (0 when `bad`
    is False, `count + 1` when True)."""
    return tf.where(bad, count + 1, tf.zeros_like(count))

"""The non-finite policy of a MAML meta-step (see `keras_meta.nonfinite`).

A meta-step whose losses or meta-gradients are not finite is not applied
and is counted in `MAML.skipped_steps`; `nonfinite_quantity` holds the
index in `keras_meta.errors.NONFINITE_QUANTITIES` of what failed first, and
`keras_meta.callbacks.NonFiniteGuard` stops `fit` after too many skipped
steps in a row. Under a strategy every replica skips together.
"""

import tensorflow as tf

from keras_meta import distribute as km_distribute
from keras_meta import errors
from keras_meta import nonfinite


def quantity(pre_losses, post_losses, meta_values):
    """0 if everything is finite, else the index in
    `errors.NONFINITE_QUANTITIES` of the first non-finite group, the same
    on every replica (an int32 scalar tensor, usable inside XLA)."""
    return _agree(nonfinite.first_nonfinite(
        [[pre_losses], [post_losses], meta_values]))


def _agree(index):
    """Under a strategy: the first quantity that failed on any replica, the
    same on every replica (so all of them skip together); else unchanged."""
    if not tf.distribute.has_strategy():
        return index
    ctx = tf.distribute.get_replica_context()
    # float32: int32 all-reduces fail inside Keras's steps_per_execution
    # loop under MirroredStrategy ("You must feed a value for placeholder").
    failed = ctx.all_reduce(
        tf.distribute.ReduceOp.SUM,
        tf.one_hot(index, len(errors.NONFINITE_QUANTITIES),
                   dtype=tf.float32))
    failed = tf.greater(failed[1:], 0)
    return tf.where(tf.reduce_any(failed),
                    tf.cast(tf.argmax(tf.cast(failed, tf.int32)), tf.int32) + 1,
                    0)


def count(maml, index):
    """Updates `maml`'s skip counters after a step that found `index`."""
    ok = tf.equal(index, 0)
    km_distribute.assign_replicated_many(
        [maml.skipped_steps, maml.consecutive_skipped_steps,
         maml.nonfinite_quantity],
        [maml.skipped_steps + tf.cast(tf.logical_not(ok), tf.int64),
         nonfinite.consecutive_count(maml.consecutive_skipped_steps,
                                     tf.logical_not(ok)),
         tf.where(ok, maml.nonfinite_quantity, index)])

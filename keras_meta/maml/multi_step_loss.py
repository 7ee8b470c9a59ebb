"""The meta-loss over inner steps: the query loss after the last step
(MAML), MAML++'s multi-step loss (MSL, annealed towards the last step), or
the uniform mean over steps 1..S, which trains every inner-step count up to
S (the expected query loss over a uniform distribution of step counts)."""

import keras
import tensorflow as tf

# `MAML(multi_step_loss=...)` by name (e.g. from a flag).
NAMES = {"last": False, "annealed": True, "uniform": "uniform"}


def resolve(value):
    """`MAML(multi_step_loss=...)` checked: False, True or "uniform" (also
    by name: "last", "annealed", "uniform")."""
    if isinstance(value, str):
        if value in NAMES:
            return NAMES[value]
    elif value is None or isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    raise ValueError(
        "`multi_step_loss` must be False (the query loss after the last "
        "inner step), True (MAML++'s loss over every step, annealed towards "
        "the last) or 'uniform' (the mean over every step, never "
        f"annealed), or one of {sorted(NAMES)}; got {value!r}.")


def multi_step_loss_weights(num_steps, progress):
    """MAML++ importance of the query loss after each inner step.

    Starts uniform over the steps and anneals linearly towards the last
    step alone as `progress` goes from 0 to 1 (Antoniou et al. 2019, MSL).

    Args:
        num_steps: number of inner steps S.
        progress: scalar tensor in [0, 1], the fraction of annealing done.

    Returns:
        A float32 tensor of shape [S] that sums to 1.
    """
    ops = keras.ops
    progress = ops.clip(ops.cast(progress, "float32"), 0.0, 1.0)
    early = (1.0 - progress) / num_steps
    last = 1.0 - (num_steps - 1) * early
    return ops.concatenate(
        [ops.full((num_steps - 1,), 1.0) * early, ops.reshape(last, (1,))])


def meta_loss(maml, losses):
    """Mean over tasks of the query loss the outer loop minimizes.

    Args:
        maml: the `MAML` model (`multi_step_loss`, its anneal steps, inner
            steps and the optimizer's step count).
        losses: [tasks, steps + 1] query losses after 0..steps inner steps
            (only the last column without the multi-step loss).
    """
    if not maml.multi_step_loss:
        return tf.reduce_mean(losses[:, -1])
    if maml.multi_step_loss == "uniform":
        # losses[:, 0] is the pre-adaptation loss; steps 1..S follow it.
        return tf.reduce_mean(losses[:, 1:])
    progress = tf.cast(maml.optimizer.iterations, tf.float32) / float(
        maml.multi_step_loss_anneal_steps)
    weights = multi_step_loss_weights(maml.inner_steps, progress)
    weights = tf.cast(weights, losses.dtype)
    return tf.reduce_mean(tf.reduce_sum(losses[:, 1:] * weights, axis=1))

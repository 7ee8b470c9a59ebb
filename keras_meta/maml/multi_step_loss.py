"""The meta-loss over inner steps: the query loss after the last step
(MAML), MAML++'s multi-step loss (MSL, annealed towards the last step), or
a fixed distribution over step counts 1..S ("uniform", or given weights):
the expected query loss when the number of inner steps is drawn from it,
computed exactly from one unroll of S steps, so every count it covers is
trained (and one compiled step serves all of them)."""

import math
import numbers

import keras
import tensorflow as tf

# `MAML(multi_step_loss=...)` by name (e.g. from a flag).
NAMES = {"last": False, "annealed": True, "uniform": "uniform"}


def resolve(value, inner_steps=None):
    """`MAML(multi_step_loss=...)` checked: False, True, "uniform" (also by
    name: "last", "annealed", "uniform") or a list of `inner_steps`
    non-negative weights of the step counts 1..S (normalized to sum 1)."""
    if isinstance(value, (list, tuple)):
        weights = list(value)
        if (inner_steps is not None and len(weights) != inner_steps) or not (
                all(isinstance(w, numbers.Real) and math.isfinite(w)
                    and w >= 0 for w in weights) and sum(weights) > 0):
            raise ValueError(
                "`multi_step_loss` as weights must be one non-negative "
                f"finite number per inner step ({inner_steps}), not all "
                f"zero; got {value!r}.")
        return [float(w) / sum(weights) for w in weights]
    if isinstance(value, str):
        if value in NAMES:
            return NAMES[value]
    elif value is None or isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    raise ValueError(
        "`multi_step_loss` must be False (the query loss after the last "
        "inner step), True (MAML++'s loss over every step, annealed towards "
        "the last), 'uniform' (the mean over every step, never annealed) "
        f"or a list of weights per step, or one of {sorted(NAMES)}; got "
        f"{value!r}.")


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
    # losses[:, 0] is the pre-adaptation loss; steps 1..S follow it.
    if maml.multi_step_loss == "uniform":
        return tf.reduce_mean(losses[:, 1:])
    if isinstance(maml.multi_step_loss, list):
        weights = tf.constant(maml.multi_step_loss, losses.dtype)
    else:
        progress = tf.cast(maml.optimizer.iterations, tf.float32) / float(
            maml.multi_step_loss_anneal_steps)
        weights = tf.cast(multi_step_loss_weights(maml.inner_steps, progress),
                          losses.dtype)
    return tf.reduce_mean(tf.reduce_sum(losses[:, 1:] * weights, axis=1))

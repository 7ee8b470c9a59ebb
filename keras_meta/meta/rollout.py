"""Evaluating an update rule: long optimization runs on a problem."""

import math

import numpy as np
import tensorflow as tf

from keras_meta.meta import problems as problems_lib
from keras_meta.rules import inner_loop


def run_rule(rule, problem, instance, steps, seed=0, chunk=50,
             meta_params=(), return_validation=False):
    """Optimizes `instance` for `steps` steps with an `UpdateRule`.

    Args:
        rule: a `keras_meta.rules.UpdateRule` (learned or hand-designed).
        problem: its `problems.Problem`.
        instance: from `problem.sample`.
        steps: number of updates.
        seed: seeds the minibatches.
        chunk: minibatches drawn at a time.
        meta_params: the rule's meta-parameters (`()` for the baselines
            and `Learned`, which hold their own).
        return_validation: also return the loss of the final parameters
            on the held-out examples of the last minibatch
            (`problem.validation_loss`).

    Returns:
        numpy array of `steps + 1` losses: f(theta_0) .. f(theta_steps),
        each on the minibatch of its step (non-finite values kept); with
        `return_validation`, `(losses, final validation loss)`.
    """
    if return_validation and not hasattr(problem, "validation_loss"):
        raise ValueError(
            f"return_validation=True needs a problem with held-out examples "
            f"(validation_loss); {problem.name!r} has none.")
    task = problem.task_tensors(instance)

    @tf.function(reduce_retracing=True)
    def step(params, state, batch, index):
        params, state, losses = inner_loop.unroll(
            rule, meta_params, params,
            lambda values, _: problem.loss(values, task, batch), 1,
            state=state, first_step=index)
        return losses[0], params, state

    @tf.function(reduce_retracing=True)
    def final_loss(params, batch):
        return problem.loss(params, task, batch)

    params = list(instance.params)
    state = rule.init(params)
    losses = []
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        batches = problem.batches(instance, n + 1, seed + done)
        for i in range(n):
            batch = tf.nest.map_structure(lambda b: b[i], batches)
            loss, params, state = step(params, state, batch,
                                       tf.constant(done + i, tf.int64))
            losses.append(float(loss))
        done += n
    last = tf.nest.map_structure(lambda b: b[n], batches)
    losses.append(float(final_loss(params, last)))
    if return_validation:
        return np.asarray(losses), float(
            problem.validation_loss(params, task, last))
    return np.asarray(losses)


def adam_reference_lr(problem):
    """A reasonable untuned Adam learning rate for TensorBoard comparisons."""
    return 0.1 if isinstance(problem, problems_lib.QuadraticProblem) else 1e-2


def log10_mean(x):
    """log10 of the mean of `x`; NaN unless every value is finite."""
    x = np.asarray(x, dtype=np.float64)
    return math.log10(float(np.mean(x))) if np.all(np.isfinite(x)) else float("nan")

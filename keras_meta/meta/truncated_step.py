"""The truncated step: a rule unrolled on a problem for a few steps, and
the meta-loss of those steps.

A pure, traceable function of the rule's meta-parameters, the optimizee's
parameters and the rule's state, run through the package's one inner loop
(`keras_meta.rules.inner_loop.unroll`):

  * step t = 0..T-1 takes the loss's gradient on minibatch t and applies
    the rule; the final parameters are evaluated on minibatch T;
  * meta-loss = mean over t = 1..T of f(theta_t) (`meta_loss="mean"`, the
    paper's sum divided by T), or of log f(theta_t) (`meta_loss="log"`,
    which weights problems of different scales alike).
"""

import tensorflow as tf

from keras_meta.rules import inner_loop
from keras_meta.rules.base import UpdateRule
from keras_meta.rules.lstm import LSTMRule

META_LOSSES = ("log", "mean")


def objective(losses, kind):
    """The meta-loss of a truncation's stacked losses (`META_LOSSES`)."""
    if kind == "log":
        return tf.reduce_mean(tf.math.log(losses + 1e-12))
    if kind == "mean":
        return tf.reduce_mean(losses)
    raise ValueError(f"meta_loss must be 'log' or 'mean', got {kind!r}")


class _LastUpdates(UpdateRule):
    """Runs `rule` and keeps the updates of its last step."""

    def __init__(self, rule):
        self.rule = rule
        self.updates = None

    def init(self, values):
        return self.rule.init(values)

    def update(self, meta_params, grads, state, values, step):
        self.updates, state = self.rule.update(meta_params, grads, state,
                                               values, step)
        return self.updates, state


def truncated_step(rule, meta_params, problem, params, state, task, batches,
                   unroll, second_order=False, meta_loss="log"):
    """Unrolls `unroll` steps of `rule` from `params`.

    Args:
        rule: a `keras_meta.rules.UpdateRule`.
        meta_params: its meta-parameters (differentiable).
        problem: a `problems.Problem`; `task` its task tensors.
        params, state: the optimizee's parameters and the rule's state.
        batches: minibatches with `unroll + 1` entries on the leading
            axis; the last one evaluates the final parameters.
        unroll: number of steps.
        second_order: keep the dependence of the optimizee's gradients on
            the meta-parameters (False, the paper's: stop it).
        meta_loss: one of `META_LOSSES`.

    Returns:
        dict with `objective` (the meta-loss), `losses` (f(theta_t) for
        t = 1..unroll), `params`, `state` and `updates` (of the last step).
    """
    def loss_fn(values, step):
        batch = tf.nest.map_structure(lambda b: b[step], batches)
        return problem.loss(values, task, batch)

    recorder = _LastUpdates(rule)
    params, state, losses = inner_loop.unroll(
        recorder, meta_params, params, loss_fn, unroll, state=state,
        second_order=second_order)
    losses = tf.stack(losses[1:] + [loss_fn(params, unroll)])
    return {
        "objective": objective(losses, meta_loss),
        "losses": losses,
        "params": params,
        "state": state,
        "updates": recorder.updates,
    }


def unrolled_meta_loss(phi, problem, params, state, task, batches, unroll,
                       config, second_order=False, meta_loss="log"):
    """`truncated_step` of the LSTM rule of `config` with meta-parameters
    `phi` (a dict of tensors)."""
    return truncated_step(LSTMRule(config), phi, problem, params, state,
                          task, batches, unroll, second_order, meta_loss)

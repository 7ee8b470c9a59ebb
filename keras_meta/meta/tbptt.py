"""Truncated backpropagation through time: the meta-gradient estimator.

The meta-gradient of one truncation is the exact gradient of its meta-loss
(`truncated_step`) with respect to the rule's meta-parameters, by
backpropagation through the unrolled steps; the parameters and rule state
at its end are carried (without gradient) into the next truncation.
"""

import tensorflow as tf

from keras_meta.meta.truncated_step import truncated_step


class TruncatedBackprop:
    """Meta-gradients of truncations of `rule`, one compiled function per
    problem.

    Args:
        rule: a `keras_meta.rules.UpdateRule` whose meta-parameters are a
            dict of tensors.
        keys: the sorted keys of that dict; meta-parameters are passed as
            the list of their values in this order.
        unroll, second_order, meta_loss: of `truncated_step`.
        jit_compile: compile each truncation with XLA.
    """

    def __init__(self, rule, keys, unroll, second_order=False,
                 meta_loss="log", jit_compile=False):
        self.rule, self.keys = rule, list(keys)
        self.unroll, self.second_order = unroll, second_order
        self.meta_loss, self.jit_compile = meta_loss, jit_compile
        self._fns = {}
        self._dist_fns = {}

    def truncation_fn(self, problem):
        """`fn(meta_values, params, state, task, batches) -> out`: the dict
        of `truncated_step` plus `meta_grads` (one per key)."""
        key = id(problem)
        if key not in self._fns:
            def truncation(meta_values, params, state, task, batches):
                with tf.GradientTape() as tape:
                    tape.watch(meta_values)
                    meta_params = dict(zip(self.keys, meta_values))
                    out = truncated_step(
                        self.rule, meta_params, problem, params, state, task,
                        batches, self.unroll, self.second_order,
                        self.meta_loss)
                out["meta_grads"] = tape.gradient(out["objective"],
                                                  meta_values)
                return out

            self._fns[key] = tf.function(
                truncation, jit_compile=self.jit_compile,
                reduce_retracing=True)
        return self._fns[key]

    def distributed_fn(self, problem, strategy):
        """Like `truncation_fn`, one truncation per replica of `strategy`.

        Returns `fn(meta_values, params, state, task, batches) -> (reduced,
        params, state, updates)` on per-replica values: `reduced` holds
        the cross-replica means of `objective`, `losses` and `meta_grads`.
        """
        key = id(problem)
        if key not in self._dist_fns:
            truncation = self.truncation_fn(problem)
            mean = tf.distribute.ReduceOp.MEAN

            @tf.function
            def step(meta_values, params, state, task, batches):
                out = strategy.run(truncation, args=(
                    meta_values, params, state, task, batches))
                reduced = {k: strategy.reduce(mean, out[k], axis=None)
                           for k in ("objective", "losses")}
                reduced["meta_grads"] = [strategy.reduce(mean, g, axis=None)
                                         for g in out["meta_grads"]]
                return reduced, out["params"], out["state"], out["updates"]

            self._dist_fns[key] = step
        return self._dist_fns[key]

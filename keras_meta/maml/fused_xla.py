"""MAML's overrides of private Keras trainer internals, all in one place.

Two methods of Keras's TensorFlow trainer are overridden, both private
Keras API (checked against Keras 3.x; revisit them on a Keras upgrade):

- `make_train_function`: under XLA with `steps_per_execution > 1`, one XLA
  program per call runs all the call's meta-steps ("fused"). Keras runs
  `steps_per_execution` steps as a graph loop that enters the
  XLA-compiled step once per meta-step, and each entry (variable
  snapshots, the iterator, control flow) can cost more than a small
  meta-step's arithmetic. Same steps, same data order.
- `_maybe_symbolic_build`: Keras builds its CompileLoss/CompileMetrics
  from a data batch, which MAML does not need (it computes its own loss
  and metrics) and which MultiWorkerMirroredStrategy refuses for an
  episode dict.
"""

import tensorflow as tf


def _fused_steps(maml):
    """An XLA function `(batches, count) -> logs` running `maml.train_step`
    on the first `count` of the stacked episode `batches`."""

    @tf.function(jit_compile=True, reduce_retracing=True)
    def run_steps(batches, count):
        logs = maml.train_step(tf.nest.map_structure(lambda b: b[0],
                                                     batches))

        def body(i, logs):
            del logs
            return i + 1, maml.train_step(tf.nest.map_structure(
                lambda b: tf.gather(b, i), batches))

        _, logs = tf.while_loop(lambda i, _: i < count, body,
                                (tf.constant(1), logs))
        return logs

    return run_steps


def _batch_reader(steps):
    """A function `iterator -> (has_value, batches, count)`: the next
    `steps` batches stacked, and how many of them the data had."""

    @tf.function(reduce_retracing=True)
    def next_batches(iterator):
        first = iterator.get_next_as_optional()
        optionals = [first] + [iterator.get_next_as_optional()
                               for _ in range(steps - 1)]
        count = tf.add_n([tf.cast(o.has_value(), tf.int32)
                          for o in optionals])

        # Missing batches (the data ran out) are padded with copies of the
        # first, and not run: the loop stops at `count`.
        def value(optional):
            return tf.cond(optional.has_value(), optional.get_value,
                           first.get_value)

        batches = tf.nest.map_structure(
            lambda *b: tf.stack(b), *[value(o) for o in optionals])
        return first.has_value(), batches, count

    return next_batches


class FusedTrainer:
    """Mixin of `MAML`: the two trainer overrides described above."""

    def make_train_function(self, force=False):
        """Keras's train function, or under XLA one XLA program per call.

        With `jit_compile`, `steps_per_execution > 1`, one device and
        episodes of fully known shape, a call takes the next
        `steps_per_execution` episode batches (fewer at the end of the
        data) and runs all their meta-steps in one XLA program.
        """
        if self.train_function is not None and not force:
            return self.train_function
        steps = self.steps_per_execution
        if (self.run_eagerly or not self.jit_compile or steps <= 1
                or self._distribute_strategy is not None
                or tf.distribute.has_strategy()):
            return super().make_train_function(force)
        run_steps = _fused_steps(self)
        next_batches = _batch_reader(steps)
        super().make_train_function(force=True)
        fallback = self.train_function

        def function(iterator):
            if not isinstance(iterator, tf.data.Iterator) or not all(
                    spec.shape.is_fully_defined() for spec in
                    tf.nest.flatten(iterator.element_spec)):
                return fallback(iterator)
            has_value, batches, count = next_batches(iterator)
            if not bool(has_value):
                raise StopIteration
            return run_steps(batches, count)

        function.fused_steps = steps
        self.train_function = function
        return self.train_function

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # MAML is built and computes its own loss and metrics, so only the
        # optimizer needs building, which needs no batch. Building it here,
        # not inside the first traced step, saves a second trace of the
        # whole step (tf.function retraces a function that created
        # variables).
        if self._distribute_strategy is None:
            if self.optimizer is not None and not self.optimizer.built:
                self.optimizer.build(self._meta_variables())
            return
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch={})

"""MAML's adaptation API: `adapt`, `task_results`, `task_losses` and
`inner_update_norms`, each compiled once per number of steps.

All of them adapt through `tasks.adapt_one_task` (or the batched path of
`task_parallel.run_episode`), so they run the inner steps that training
and evaluation run, with the one inner loop.
"""

import keras
import tensorflow as tf

from keras_meta.maml import checks
from keras_meta.maml import task_parallel
from keras_meta.maml import tasks as task_lib


class Adaptation:
    """Mixin of `MAML`: the adaptation API and its compiled functions."""

    def _compiled(self, key, build):
        """The function cached under `key`, built by `build()` once."""
        # A plain dict kept out of Keras's attribute tracking.
        fns = self.__dict__.get("_km_compiled_fns")
        if fns is None:
            fns = {}
            object.__setattr__(self, "_km_compiled_fns", fns)
        if key not in fns:
            fns[key] = build()
        return fns[key]

    def task_results(self, episode, steps=None):
        """Per-task query losses after 0..steps inner steps, and predictions.

        Args:
            episode: an episode dict with a task axis.
            steps: inner steps; defaults to `eval_inner_steps`.

        Returns:
            A dict: `losses`, float [tasks, steps + 1], column k the query
            loss after k inner steps (column 0 before adaptation);
            `predictions`, the query predictions after `steps` steps,
            [tasks, queries, ...].
        """
        checks.require_compiled(self, "task_results")
        episode = checks.episode_of(episode)
        steps = self._eval_steps(steps)

        def build():
            def run(episode):
                _, _, outputs, _ = task_parallel.run_episode(
                    self, episode, steps, training=self.transductive,
                    second_order=False, record_steps=range(steps + 1))
                return {"losses": outputs["losses"],
                        "predictions": outputs["post_pred"]}

            return tf.function(run, jit_compile=bool(self.jit_compile))

        return self._compiled(("task_results", steps), build)(episode)

    def task_losses(self, episode, steps=None):
        """The `losses` of `task_results`: [tasks, steps + 1]."""
        return self.task_results(episode, steps)["losses"]

    def inner_update_norms(self, episode, steps=None):
        """Size of each inner step's update, per task.

        Args:
            episode: an episode dict with a task axis.
            steps: inner steps; defaults to `eval_inner_steps`.

        Returns:
            float [tasks, steps]: column k is the root mean square, over
            the adapted coordinates, of the change the inner rule made in
            step k + 1 (0 for a step that `inner_guard` undid, and for
            every later step of that task).
        """
        checks.require_compiled(self, "inner_update_norms")
        episode = checks.episode_of(episode)
        steps = self._eval_steps(steps)

        def build():
            return tf.function(self._update_norms_fn(steps))

        return self._compiled(("inner_update_norms", steps), build)(episode)

    def _update_norms_fn(self, steps):
        """`episode -> [tasks, steps]` update norms (see above)."""
        indices = self._adapted_indices
        size = sum(int(v.shape.num_elements())
                   for v in self.adapted_variables)

        def one_task(params, rates, state, task):
            params = task_lib.start_params(
                self, params, state, task["support_x"], task["support_y"],
                training=self.transductive)
            previous = [[params[i] for i in indices]]
            norms = []

            def on_step(step, fast):
                current = [fast[i] for i in indices]
                norms.append(tf.sqrt(tf.add_n([
                    tf.reduce_sum(tf.square(c - p))
                    for c, p in zip(current, previous[0])]) / size))
                previous[0] = current

            task_lib.adapt_from(
                self, params, rates, state, task["support_x"],
                task["support_y"], steps, training=self.transductive,
                second_order=False, on_step=on_step)
            return tf.stack(norms)

        def run(episode):
            values = task_lib.current_values(self)
            dtype = self.adapted_variables[0].dtype
            return tf.map_fn(
                lambda task: one_task(*values, task), episode,
                fn_output_signature=tf.TensorSpec([steps], dtype))

        return run

    def adapt(self, support_x, support_y, steps=None):
        """Adapts to one task and returns a plain, adapted `keras.Model`.

        The meta-learned weights are untouched.

        Args:
            support_x: one task's support inputs, shape [n, *input_shape]
                (no task axis).
            support_y: its targets, shape [n, *target_shape].
            steps: inner steps; defaults to `eval_inner_steps`.

        Returns:
            A clone of the wrapped model holding the adapted weights. Its
            `predict` runs a function shared by all models `adapt` returns
            (no new trace per model); `adapt_and_predict` skips the clone.

        Raises:
            ValueError: the support set is empty, holds NaN or inf, or does
                not fit the model and the loss (the checks of `fit`, see
                `keras_meta.maml.checks.check_episode`).
        """
        checks.require_compiled(self, "adapt")
        steps = self._eval_steps(steps)
        support_x = tf.convert_to_tensor(support_x)
        support_y = tf.convert_to_tensor(support_y)
        checks.check_support(self.model, support_x, support_y, self._loss_kind)

        def build():
            def run(support_x, support_y):
                params, rates, state = task_lib.current_values(self)
                return task_lib.adapt_one_task(
                    self, params, rates, state, support_x, support_y, steps,
                    training=self.transductive, second_order=False)

            return tf.function(run)

        fast = self._compiled(("adapt", steps), build)(support_x, support_y)
        adapted = keras.models.clone_model(self.model)
        for variable, value in zip(adapted.trainable_variables, fast):
            variable.assign(value)
        for variable, value in zip(adapted.non_trainable_variables,
                                   self.model.non_trainable_variables):
            variable.assign(value)
        if not tf.distribute.has_strategy():
            adapted.predict_function = self._shared_predict_step(adapted)
        return adapted

    def _shared_predict_step(self, adapted):
        """A `predict_function` for a model from `adapt`: one
        `tf.function` of the wrapped model's `stateless_call`, shared by
        every adapted clone (their weights are arguments), so `predict` on
        a new clone does not trace again. Keras's predict loop calls it
        with a list holding one batch."""
        shared = self._compiled(("adapted_predict",), lambda: tf.function(
            lambda trainable, non_trainable, x: self.model.stateless_call(
                trainable, non_trainable, x, training=False)[0],
            reduce_retracing=True))

        def predict_function(data):
            x, _, _ = keras.utils.unpack_x_y_sample_weight(data[0])
            return shared([v.value for v in adapted.trainable_variables],
                          [v.value for v in adapted.non_trainable_variables],
                          x)

        return predict_function

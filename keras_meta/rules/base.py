"""The update-rule contract."""


class UpdateRule:
    """A functional optimizer over lists of tensors.

    A rule is a pair of pure functions, so it can run inside a differentiated
    inner loop (MAML), an unrolled meta-training truncation, or a Keras
    optimizer's `update_step` alike:

    - `init(values) -> state`: the state before the first step, for the
      list of parameter tensors `values` (any nest of tensors; `()` for a
      stateless rule).
    - `update(meta_params, grads, state, values, step) -> (updates, state)`:
      one step. `updates` is a list of tensors added to `values`
      (`new_value = value + update`). `meta_params` are the rule's own
      meta-parameters as tensors (learned rates, an LSTM's weights; `()`
      for a hand-designed rule); `step` is the 0-based step index, a Python
      int inside an unrolled loop or a scalar tensor in a Keras optimizer.

    Nothing is assigned: meta-gradients flow through `update` to
    `meta_params`, `grads` and `values`.

    Example:

    ```python
    class SignSGD(keras_meta.rules.UpdateRule):
        def __init__(self, learning_rate):
            self.learning_rate = learning_rate

        def update(self, meta_params, grads, state, values, step):
            return [-self.learning_rate * tf.sign(g) for g in grads], state
    ```
    """

    def init(self, values):
        """The state before the first step.

        Args:
            values: list of tensors, the parameters' initial values.

        Returns:
            Any nest of tensors; `()` for a stateless rule.
        """
        del values
        return ()

    def table_step(self, meta_params, indices, rows):
        """How to step a table (an `Embedding`'s weights) whose gradient
        came as sparse rows, `indices` (with repeats) out of `rows`:
        `(meta_params, row_mask)`. `update` sees that gradient summed into
        a dense tensor; a rule that treats such tables apart may change the
        meta-parameters of this step, and return in `row_mask` (a `[rows]`
        bool tensor) the rows the step may change, the others keeping
        their values and state (LazyAdam's sparse semantics). By default
        `(meta_params, None)`: the step of the dense gradient, on every
        row, as Keras's Adam takes it."""
        del indices, rows
        return meta_params, None

    def storage_dtypes(self, dtype):
        """`{state key: dtype}` for a Keras optimizer that keeps one
        tensor's state in variables, for a parameter of `dtype`: keys left
        out are stored in `dtype`. `update` still reads and returns the
        computation dtype; a bfloat16 slot is read as float32 and written
        rounded stochastically (`optimizers.variable_step`). By default
        `{}`."""
        del dtype
        return {}

    def update(self, meta_params, grads, state, values, step):
        """One step.

        Args:
            meta_params: the rule's meta-parameters as tensors.
            grads: list of tensors, the loss gradients at `values`.
            state: from `init` or the previous `update`.
            values: list of tensors, the parameters' current values.
            step: the 0-based index of this step.

        Returns:
            `(updates, new_state)`, `updates` a list like `values`.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement update(meta_params, grads, "
            "state, values, step)."
        )

"""The contract of an inner-loop update rule of `keras_meta.MAML`."""

import keras

from keras_meta.rules.base import UpdateRule

@keras.saving.register_keras_serializable(package="keras_meta")
class InnerOptimizer(UpdateRule):
    """Base class of the update rules that `keras_meta.MAML` adapts with.

    MAML's inner loop calls a rule as a pure function: no variable is
    assigned while adapting, so the query loss can be differentiated
    through every inner step, with respect to the initialization and to the
    rule's own meta-parameters. A rule is therefore split in three:

    - `build` creates the rule's meta-parameters as weights of the MAML
      model (`owner.add_weight`), so the outer optimizer meta-learns them
      with the initialization, `.keras` files save them and
      `get_config` holds only the rule's settings;
    - `init` and `update` are the `keras_meta.rules.UpdateRule` contract:
      the per-task state before the first inner step (e.g. per-coordinate
      LSTM states; `()` for a stateless rule), and one step mapping the
      gradients, state and current values to additive updates and the new
      state, given the meta-parameters (the weights `build` created) as
      tensors.

    Subclass it for a new rule and pass an instance as
    `keras_meta.MAML(model, inner_optimizer=rule)`; register the subclass
    with `keras.saving.register_keras_serializable` so that saved models
    load. One rule object belongs to one MAML model.

    Example:

    ```python
    class SignSGD(keras_meta.maml.InnerOptimizer):
        def update(self, meta_params, grads, state, values, step):
            return [-self.learning_rate * tf.sign(g) for g in grads], state

    maml = keras_meta.MAML(net, inner_optimizer=SignSGD())
    ```
    """

    def build(self, owner, adapted_variables, inner_steps, learning_rate):
        """Creates the rule's meta-parameters on `owner`.

        Args:
            owner: the MAML model; create weights with `owner.add_weight`.
            adapted_variables: the variables the inner loop adapts.
            inner_steps: inner steps in meta-training.
            learning_rate: float, MAML's `inner_learning_rate`.

        Returns:
            The list of created weights (empty for a rule without any). The
            inner loop passes them back to `update` as `meta_params`, in
            this order, as tensors.
        """
        del owner, adapted_variables, inner_steps
        self.learning_rate = float(learning_rate)
        return []

    @property
    def learned_rates(self):
        """The kind of learned rate (see `inner_rules.rates`), or None."""
        return None

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

"""Inner-loop SGD with a fixed or a meta-learned rate."""

import keras

from keras_meta.maml.inner_rules import rates as inner_rates
from keras_meta.maml.inner_rules.base import InnerOptimizer


@keras.saving.register_keras_serializable(package="keras_meta")
class InnerSGD(InnerOptimizer):
    """The inner SGD step `theta - alpha * grad` of MAML and its variants.

    `alpha` is MAML's `inner_learning_rate` (`learned_rates=None`, plain
    MAML), a meta-learned tensor the shape of each adapted variable
    (`"per_parameter"`, Meta-SGD), or one meta-learned scalar per adapted
    variable per inner step (`"per_step"`, MAML++'s LSLR); learned rates
    start at `inner_learning_rate`. `MAML(inner_optimizer="sgd" |
    "meta_sgd" | "lslr")` builds this rule.

    Example:

    ```python
    maml = keras_meta.MAML(
        net, inner_optimizer=keras_meta.maml.InnerSGD("per_parameter"))
    ```

    Args:
        learned_rates: None, "per_parameter" or "per_step".

    Reference:
        - [Finn et al., 2017](https://arxiv.org/abs/1703.03400)
        - [Li et al., 2017 (Meta-SGD)](https://arxiv.org/abs/1707.09835)
        - [Antoniou et al., 2019 (MAML++)](https://arxiv.org/abs/1810.09502)
    """

    def __init__(self, learned_rates=None):
        inner_rates.validate_rate_kind(learned_rates, "learned_rates")
        self._learned_rates = learned_rates

    @property
    def learned_rates(self):
        return self._learned_rates

    def build(self, owner, adapted_variables, inner_steps, learning_rate):
        super().build(owner, adapted_variables, inner_steps, learning_rate)
        return inner_rates.make_rate_variables(
            owner, self._learned_rates, adapted_variables, inner_steps,
            learning_rate,
        )

    def update(self, meta_params, grads, state, values, step):
        updates = []
        for index, grad in enumerate(grads):
            rate = inner_rates.rate_for(
                self._learned_rates, meta_params, self.learning_rate, index,
                step,
            )
            updates.append(-(rate * grad))
        return updates, state

    def get_config(self):
        return {"learned_rates": self._learned_rates}

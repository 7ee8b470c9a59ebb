"""Meta-SGD: MAML with a meta-learned inner learning rate per parameter."""

import keras

from keras_meta.maml.model import MAML


@keras.saving.register_keras_serializable(package="keras_meta")
class MetaSGD(MAML):
    """MAML whose inner rate is a learned tensor the shape of each weight.

    The inner update is `theta - alpha * grad` with `alpha` a meta-learned
    variable per adapted weight, initialized to `inner_learning_rate`.

    Example:

    ```python
    maml = keras_meta.MetaSGD(net, inner_learning_rate=0.01)
    maml.compile(optimizer="adam", loss="mse")
    ```

    Args:
        model: a built Keras model.
        **kwargs: other `keras_meta.MAML` arguments.

    Reference:
        - [Li et al., 2017](https://arxiv.org/abs/1707.09835)
    """

    def __init__(self, model, inner_optimizer="meta_sgd", **kwargs):
        super().__init__(model, inner_optimizer=inner_optimizer, **kwargs)

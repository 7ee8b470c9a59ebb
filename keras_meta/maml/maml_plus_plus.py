"""MAML++: learned per-layer-per-step inner rates and a multi-step loss."""

import keras

from keras_meta.maml.model import MAML
from keras_meta.maml.multi_step_loss import multi_step_loss_weights  # noqa: F401


@keras.saving.register_keras_serializable(package="keras_meta")
class MAMLPlusPlus(MAML):
    """MAML with the MAML++ LSLR and MSL fixes.

    Each adapted variable gets one learned inner rate per inner step (LSLR),
    and the meta-loss weighs the query loss after every inner step, annealed
    towards the last step (MSL, `multi_step_loss_weights`).

    Example:

    ```python
    maml = keras_meta.MAMLPlusPlus(net, inner_learning_rate=0.01, inner_steps=5)
    maml.compile(optimizer="adam", loss="mse")
    ```

    Args:
        model: a built Keras model.
        **kwargs: other `keras_meta.MAML` arguments.

    Reference:
        - [Antoniou et al., 2019](https://arxiv.org/abs/1810.09502)
    """

    def __init__(
        self,
        model,
        inner_optimizer="lslr",
        multi_step_loss=True,
        **kwargs,
    ):
        super().__init__(
            model,
            inner_optimizer=inner_optimizer,
            multi_step_loss=multi_step_loss,
            **kwargs,
        )

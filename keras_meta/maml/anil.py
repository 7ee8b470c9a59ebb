"""ANIL: MAML that adapts only the network's head in the inner loop."""

import keras

from keras_meta.maml.checks import last_layer_with_weights
from keras_meta.maml.model import MAML


@keras.saving.register_keras_serializable(package="keras_meta")
class ANIL(MAML):
    """Almost No Inner Loop: only the head adapts; the body is meta-learned.

    Example:

    ```python
    anil = keras_meta.ANIL(net)  # adapts net's last layer with weights
    anil.compile(optimizer="adam", loss="mse")
    ```

    Args:
        model: a built Keras model.
        adapted_layers: names of the layers that adapt; defaults to the
            last layer with trainable weights.
        **kwargs: other `keras_meta.MAML` arguments.

    Reference:
        - [Raghu et al., 2020](https://arxiv.org/abs/1909.09157)
    """

    def __init__(self, model, adapted_layers=None, **kwargs):
        if adapted_layers is None and isinstance(model, keras.Model):
            adapted_layers = [last_layer_with_weights(model)]
        super().__init__(model, adapted_layers=adapted_layers, **kwargs)

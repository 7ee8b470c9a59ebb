"""The four-block convolutional network of the few-shot literature."""

import keras

from keras_meta.data.image_classes import resizing_layer


def conv4_classifier(ways, filters=64, image_size=(28, 28), channels=1,
                     strided=True, invert=True, name="conv4"):
    """Conv4 for raw images: resize and rescale inside, logits out.

    The model takes images as `tf.io.decode_png(..., channels=channels)`
    returns them (uint8, any size), resizes them to `image_size` with the
    same layer the episode cache uses, maps [0, 255] to [0, 1] (inverted for
    Omniglot, so ink is 1 as in the reference implementation), then runs four
    blocks of 3x3 convolution, batch normalization and ReLU. With
    `strided=True` (the reference Omniglot network) each convolution has
    stride 2 and the features are averaged over space; otherwise each block
    ends with 2x2 max-pooling and the features are flattened.

    Example:

    ```python
    net = keras_meta.models.conv4_classifier(ways=5)
    maml = keras_meta.MAML(net, inner_learning_rate=0.4)
    ```

    Args:
        ways: number of output classes (logits).
        filters: channels of every convolution.
        image_size: (height, width) the network works at.
        channels: input channels.
        strided: strided convolutions (True) or max-pooling (False).
        invert: map 255 (white background) to 0 and 0 (ink) to 1.
        name: model name.

    Reference:
        - [Finn et al., 2017](https://arxiv.org/abs/1703.03400)
        - [Vinyals et al., 2016](https://arxiv.org/abs/1606.04080)
    """
    inputs = keras.Input((None, None, channels), dtype="uint8", name="image")
    x = resizing_layer(image_size)(inputs)
    if invert:
        x = keras.layers.Rescaling(-1.0 / 255, offset=1.0, name="invert")(x)
    else:
        x = keras.layers.Rescaling(1.0 / 255, name="rescale")(x)
    for block in range(4):
        x = keras.layers.Conv2D(
            filters, 3, strides=2 if strided else 1, padding="same",
            name=f"conv{block}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{block}")(x)
        x = keras.layers.ReLU(name=f"relu{block}")(x)
        if not strided:
            x = keras.layers.MaxPooling2D(2, padding="same",
                                          name=f"pool{block}")(x)
    if strided:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    else:
        x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(ways, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)

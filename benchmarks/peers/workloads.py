"""The Keras side of the MAML peer benchmarks (`benchmarks.maml_peers`):
the conv4 model, fixed episodes and analytic FLOPs. No flags, so tests can
import it beside other benchmark modules."""

import numpy as np

WAYS, SHOTS, QUERIES = 5, 1, 15


def conv4_forward_flops(ways=WAYS, filters=64, size=28):
    """FLOPs of one forward pass of the strided conv4 on one image."""
    flops, c_in = 0, 1
    for _ in range(4):
        size = (size + 1) // 2
        flops += 2 * size * size * filters * c_in * 9
        c_in = filters
    return flops + 2 * filters * ways


def conv4_step_flops(tasks, inner_steps, second_order):
    """Analytic FLOPs of one MAML meta-step on conv4 (see module doc)."""
    f = conv4_forward_flops()
    support, query = WAYS * SHOTS, WAYS * QUERIES
    inner = inner_steps * 3 * support * f * (2 if second_order else 1)
    return tasks * (inner + 3 * query * f)


def episode_arrays(name, tasks, seed=0):
    """One fixed episode batch as numpy arrays (channels last)."""
    rng = np.random.default_rng(seed)
    if name == "sinusoid":
        amp = rng.uniform(0.1, 5.0, (tasks, 1, 1))
        phase = rng.uniform(0, np.pi, (tasks, 1, 1))
        xs = rng.uniform(-5, 5, (tasks, 20, 1))
        ys = amp * np.sin(xs - phase)
        f32 = lambda a: a.astype("float32")  # noqa: E731
        return dict(support_x=f32(xs[:, :10]), support_y=f32(ys[:, :10]),
                    query_x=f32(xs[:, 10:]), query_y=f32(ys[:, 10:]))
    labels = np.arange(WAYS, dtype="int32")
    return dict(
        support_x=rng.uniform(0, 1, (tasks, WAYS * SHOTS, 28, 28, 1)).astype(
            "float32"),
        support_y=np.tile(np.repeat(labels, SHOTS), (tasks, 1)),
        query_x=rng.uniform(0, 1, (tasks, WAYS * QUERIES, 28, 28, 1)).astype(
            "float32"),
        query_y=np.tile(np.repeat(labels, QUERIES), (tasks, 1)))


def conv4_keras(filters=64):
    """The strided conv4 on float 28x28x1 images (no resizing layer)."""
    import keras

    inputs = keras.Input((28, 28, 1))
    x = inputs
    for _ in range(4):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(WAYS)(x))

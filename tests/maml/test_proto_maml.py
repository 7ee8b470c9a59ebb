"""ProtoMAML: the head starts each task at its prototypes, everywhere the
inner loop runs, and meta-gradients flow through the prototypes."""

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_meta
from keras_meta.data import few_shot
from keras_meta.learners import protonet
from keras_meta.maml import meta_gradients
from keras_meta.maml import tasks as task_lib

WAYS = 3
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def net(dtype="float32", seed=0, batch_norm=True, head=None):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((2,), dtype=dtype),
              keras.layers.Dense(5, activation="tanh", dtype=dtype,
                                 name="body")]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization(dtype=dtype, name="bn"))
    layers.append(head or keras.layers.Dense(WAYS, dtype=dtype, name="head"))
    return keras.Sequential(layers)


def make(dtype="float32", **kwargs):
    maml = keras_meta.ProtoMAML(
        net(dtype, batch_norm=kwargs.pop("batch_norm", True)),
        **{"inner_learning_rate": 0.5, "inner_steps": 2, **kwargs})
    maml.compile(optimizer=keras.optimizers.Adam(0.01), loss=LOSS,
                 metrics=["accuracy"])
    return maml


def episode(dtype="float32", seed=0, tasks=2, shots=2, queries=3):
    """Classes are Gaussian blobs around per-task centers."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(tasks, WAYS, 2)) * 2

    def draw(count):
        y = np.tile(np.repeat(np.arange(WAYS), count), (tasks, 1))
        x = np.take_along_axis(centers, y[..., None], axis=1)
        return (x + rng.normal(size=x.shape)).astype(dtype), y.astype("int32")

    sx, sy = draw(shots)
    qx, qy = draw(queries)
    return {"support_x": sx, "support_y": sy, "query_x": qx, "query_y": qy}


def features(maml, x):
    body = keras.Sequential(maml.model.layers[:-1])
    return body(x, training=True)


def test_before_adaptation_it_is_a_prototypical_network():
    """The start head's softmax is ProtoNet's (squared Euclidean) softmax,
    and the support's prototypes come out of one-hot targets alike."""
    maml = make()
    data = episode()
    sx, sy, qx = data["support_x"][0], data["support_y"][0], data["query_x"][0]
    params, _, state = task_lib.current_values(maml)
    start = task_lib.start_params(maml, params, state, sx, sy, True)
    pred, _, _ = task_lib.forward(maml, start, state, qx, True)
    # The query pass in training mode normalizes with the query's moments.
    centers = protonet.prototypes(features(maml, sx)[None], sy[None], WAYS)
    expected = protonet.distance_logits(features(maml, qx)[None], centers)[0]
    np.testing.assert_allclose(tf.nn.softmax(pred), tf.nn.softmax(expected),
                               rtol=1e-5, atol=1e-6)
    onehot = task_lib.start_params(maml, params, state, sx,
                                   tf.one_hot(sy, WAYS), True)
    for a, b in zip(start, onehot):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    # The step-0 column of task_losses is this prototype classifier's loss.
    losses = maml.task_losses(data, steps=1).numpy()
    np.testing.assert_allclose(losses[0, 0], LOSS(data["query_y"][0], pred),
                               rtol=1e-5)


def test_padded_support_rows_do_not_move_the_prototypes():
    maml = make(batch_norm=False)
    data = episode(shots=2)
    sx, sy = data["support_x"][0], data["support_y"][0]
    params, _, state = task_lib.current_values(maml)
    plain = task_lib.start_params(maml, params, state, sx, sy, True)
    padded = task_lib.start_params(
        maml, params, state, np.concatenate([sx, sx[:2] + 5.0]),
        np.concatenate([sy, sy[:2]]), True,
        support_weights=tf.constant([1.0] * len(sx) + [0.0, 0.0]))
    for a, b in zip(plain, padded):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_finite_differences(first_order,
                                                  check_meta_gradient):
    """Through the prototypes (also first order, where the inner step's
    own second-order term is dropped but the prototypes still carry the
    body's gradient) and through exact batch-norm moments."""
    maml = make("float64", first_order=first_order)
    data = episode("float64")
    _, grads, _, _ = meta_gradients.compute(maml, data)
    head = maml.model.get_layer("head")
    # The head's own weights are replaced by the prototypes': no gradient.
    for variable, grad in zip(maml.model.trainable_variables, grads):
        if variable.path.startswith(head.path):
            np.testing.assert_array_equal(grad.numpy(), 0.0)
    if first_order:
        # First order: the body's gradient differs from second order's
        # and is not the derivative; it must still reach the body.
        body_grad = grads[0].numpy()
        assert np.abs(body_grad).max() > 1e-6
        return
    check_meta_gradient(maml, data)


def test_fit_evaluate_adapt_save_and_load(tmp_path):
    maml = make()
    data = episode(seed=1)
    stream = tf.data.Dataset.from_tensors(episode(seed=2)).repeat()
    head = [v.numpy() for v in maml.model.get_layer("head").weights]
    history = maml.fit(stream, steps_per_epoch=4, epochs=3, verbose=0).history
    assert history["skipped_steps"][-1] == 0
    assert history["loss"][-1] < history["loss"][0]
    # The head's meta-weights never move: every task replaces them.
    for before, v in zip(head, maml.model.get_layer("head").weights):
        np.testing.assert_array_equal(before, v.numpy())

    results = maml.evaluate(tf.data.Dataset.from_tensors(data), verbose=0,
                            return_dict=True)
    losses = maml.task_losses(data).numpy()
    np.testing.assert_allclose(results["pre_adapt_loss"],
                               losses[:, 0].mean(), rtol=1e-5)
    np.testing.assert_allclose(results["post_adapt_loss"],
                               losses[:, -1].mean(), rtol=1e-5)

    # adapt: a plain model holding the adapted prototype head.
    adapted = maml.adapt(data["support_x"][0], data["support_y"][0])
    pred = adapted(data["query_x"][0], training=True)
    np.testing.assert_allclose(LOSS(data["query_y"][0], pred),
                               losses[0, -1], rtol=1e-5)
    # Transductive (batch statistics), as adapt_and_predict serves.
    np.testing.assert_allclose(
        pred.numpy(),
        maml.adapt_and_predict(data["support_x"][0], data["support_y"][0],
                               data["query_x"][0]).numpy(),
        rtol=1e-5, atol=1e-6)
    norms = maml.inner_update_norms(data).numpy()
    assert norms.shape == (2, 2) and np.all(norms > 0)

    path = str(tmp_path / "proto_maml.keras")
    maml.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is keras_meta.ProtoMAML
    np.testing.assert_array_equal(loaded.task_losses(data).numpy(), losses)


def test_bad_heads_are_refused_with_what_was_expected():
    with pytest.raises(ValueError, match="must be a keras.layers.Dense"):
        keras_meta.ProtoMAML(keras.Sequential([
            keras.Input((4, 4, 1)), keras.layers.Conv2D(WAYS, 4),
            keras.layers.Flatten()]))
    with pytest.raises(ValueError, match="must have a bias"):
        keras_meta.ProtoMAML(net(head=keras.layers.Dense(
            WAYS, use_bias=False, name="head")))
    with pytest.raises(ValueError, match="activation 'linear' or 'softmax'.*"
                       "'relu'"):
        keras_meta.ProtoMAML(net(head=keras.layers.Dense(
            WAYS, activation="relu", name="head")))


def test_export_adapts_from_the_prototypes(tmp_path):
    """The SavedModel's adapting signature gives `adapt_and_predict`'s
    predictions (which start at the prototypes)."""
    maml = make(batch_norm=False)
    data = episode(seed=4)
    sx, sy, qx = data["support_x"][0], data["support_y"][0], data["query_x"][0]
    path = str(tmp_path / "exported")
    maml.export(path, verbose=False)
    served = tf.saved_model.load(path).signatures["adapt_and_predict"](
        support_x=tf.constant(sx), support_y=tf.constant(sy),
        query_x=tf.constant(qx))["output_0"]
    np.testing.assert_allclose(
        served.numpy(), maml.adapt_and_predict(sx, sy, qx).numpy(),
        rtol=1e-5, atol=1e-6)
    # Not the meta-learned head's: the prototypes changed the answer.
    params, _, state = task_lib.current_values(maml)
    plain = task_lib.adapt_from(maml, params, [], state, sx, sy, 2, True,
                                False)
    pred, _, _ = task_lib.forward(maml, plain, state, qx, True)
    assert np.abs(pred.numpy() - served.numpy()).max() > 1e-2


def test_a_class_without_support_examples_is_never_predicted():
    """Fewer ways than the head has units: the absent class's logit lies
    far below the others', not at a prototype at the origin."""
    maml = make(batch_norm=False)
    data = episode()
    keep = data["support_y"][0] < WAYS - 1  # drop the last class
    sx, sy = data["support_x"][0][keep], data["support_y"][0][keep]
    params, _, state = task_lib.current_values(maml)
    start = task_lib.start_params(maml, params, state, sx, sy, True)
    pred, _, _ = task_lib.forward(maml, start, state, data["query_x"][0],
                                  True)
    assert np.all(pred.numpy()[:, -1] < pred.numpy()[:, :-1].min(1) - 50)
    np.testing.assert_array_equal(start[-2].numpy()[:, -1], 0.0)


def test_xla_step_gives_the_eager_graph_step():
    """The compiled (XLA) meta-step computes what the plain one does."""
    data = episode(seed=5)
    weights = []
    for jit in (False, True):
        maml = keras_meta.ProtoMAML(net(), inner_learning_rate=0.5)
        maml.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS,
                     jit_compile=jit)
        maml.fit(tf.data.Dataset.from_tensors(data), verbose=0)
        weights.append([v.numpy() for v in maml.model.trainable_variables])
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def image_net(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6, 6, 1)),
        keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(WAYS, name="head")])


def image_episode(seed=0, tasks=2):
    rng = np.random.default_rng(seed)
    y = np.tile(np.arange(WAYS), (tasks, 1)).astype("int32")
    return {"support_x": rng.random((tasks, WAYS, 6, 6, 1), "float32"),
            "support_y": y,
            "query_x": rng.random((tasks, WAYS, 6, 6, 1), "float32"),
            "query_y": y}


def test_support_views_start_from_the_mean_feature_of_moved_copies():
    """With support_shift=1 each prototype is the mean feature of the 9
    moved copies of its image (one batch-statistics pass over all), the
    inner steps see the support itself, and meta-training never uses the
    views: the meta-step is support_shift=0's."""
    data = image_episode()
    sx, sy = data["support_x"][0], data["support_y"][0]
    maml = keras_meta.ProtoMAML(image_net(), support_shift=1,
                                inner_learning_rate=0.5, inner_steps=1)
    maml.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    params, _, state = task_lib.current_values(maml)
    start = task_lib.start_params(maml, params, state, sx, sy, True)
    body = keras.Sequential(maml.model.layers[:-1])
    copies = [few_shot.shifted(sx, d, r) for d in (-1, 0, 1)
              for r in (-1, 0, 1)]
    feats = tf.reshape(body(tf.concat(copies, 0), training=True),
                       [9, WAYS, -1])
    centers = tf.reduce_mean(feats, 0)  # one class per support image
    np.testing.assert_allclose(start[-2].numpy(), 2 * tf.transpose(centers),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        start[-1].numpy(), -tf.reduce_sum(centers ** 2, -1), rtol=1e-5)

    with_views = maml.task_losses(data).numpy()
    maml.support_shift = 0  # traced again without the views
    without = maml.task_losses(data).numpy()
    assert np.abs(with_views - without).max() > 1e-4
    maml.support_shift = 1
    np.testing.assert_array_equal(maml.task_losses(data).numpy(), with_views)

    trained = []
    for shift in (0, 1):
        maml = keras_meta.ProtoMAML(image_net(), support_shift=shift,
                                    inner_learning_rate=0.5, inner_steps=1)
        maml.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
        maml.fit(tf.data.Dataset.from_tensors(data), verbose=0)
        trained.append([v.numpy() for v in maml.model.trainable_variables])
    for a, b in zip(*trained):
        np.testing.assert_array_equal(a, b)


def test_support_shift_is_saved_and_checked(tmp_path):
    data = image_episode(seed=3)
    maml = keras_meta.ProtoMAML(image_net(), support_shift=2,
                                inner_learning_rate=0.5, inner_steps=1)
    maml.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    path = str(tmp_path / "views.keras")
    maml.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.support_shift == 2
    np.testing.assert_allclose(loaded.task_losses(data).numpy(),
                               maml.task_losses(data).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="support_shift=1 moves images.*"
                       r"\(None, 2\)"):
        keras_meta.ProtoMAML(net(), support_shift=1)
    with pytest.raises(ValueError, match="support_shift"):
        maml.support_shift = -1

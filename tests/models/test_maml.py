"""MAML: gradients, adaptation, variants, saving, XLA, learning."""

import json
import re

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_meta
from keras_meta.maml import batch_norm
from keras_meta.maml import meta_gradients
from keras_meta.maml import task_parallel
from keras_meta.maml.multi_step_loss import multi_step_loss_weights


def tiny_net(dtype="float32", hidden=4, batch_norm=False, seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((1,), dtype=dtype)]
    layers.append(keras.layers.Dense(hidden, activation="tanh", dtype=dtype,
                                     name="body"))
    if batch_norm:
        layers.append(keras.layers.BatchNormalization(dtype=dtype, name="bn"))
    layers.append(keras.layers.Dense(1, dtype=dtype, name="head"))
    return keras.Sequential(layers)


def episode(dtype="float32", tasks=3, shots=5, queries=6, seed=0):
    data = next(iter(keras_meta.data.sinusoid(
        shots=shots, queries=queries, meta_batch_size=tasks, seed=seed)))
    return {k: tf.cast(v, dtype) for k, v in data.items()}


def make_maml(variant, model, **kwargs):
    cls, defaults = VARIANTS[variant]
    maml = cls(model, **{**defaults, **kwargs})
    maml.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return maml


VARIANTS = {
    "maml": (keras_meta.MAML, dict(inner_learning_rate=0.1, inner_steps=2)),
    "fomaml": (keras_meta.MAML,
               dict(inner_learning_rate=0.1, inner_steps=2, first_order=True)),
    "meta_sgd": (keras_meta.MetaSGD, dict(inner_learning_rate=0.1)),
    "maml_plus_plus": (keras_meta.MAMLPlusPlus,
                       dict(inner_learning_rate=0.1, inner_steps=2,
                            multi_step_loss_anneal_steps=4)),
    "anil": (keras_meta.ANIL, dict(inner_learning_rate=0.1, inner_steps=2)),
    "zeroed_head": (keras_meta.MAML, dict(inner_learning_rate=0.1,
                                          inner_steps=2, zeroed_layers=True)),
}




# ------------------------------------------------------------ gradients


# "vectorized" differentiates the map over tasks from outside;
# "sequential" takes each task's meta-gradient inside its loop over tasks.
@pytest.mark.parametrize("parallelism", ["vectorized", "sequential"])
@pytest.mark.parametrize("variant", ["maml", "meta_sgd", "maml_plus_plus",
                                     "anil"])
def test_meta_gradient_matches_finite_differences(variant, parallelism,
                                                  check_meta_gradient):
    maml = make_maml(variant, tiny_net("float64"),
                     task_parallelism=parallelism)
    maml.optimizer.iterations.assign(1)  # mid-anneal for the MSL weights
    check_meta_gradient(maml, episode("float64"))


@pytest.mark.parametrize("parallelism", ["vectorized", "sequential"])
def test_second_order_meta_gradient_through_batch_norm(parallelism,
                                                       check_meta_gradient):
    """tf.nn.moments stops the gradient of the mean inside the variance,
    which breaks second derivatives; MAML's forward passes use exact
    moments (keras_meta.maml.batch_norm)."""
    maml = make_maml("maml", tiny_net("float64", batch_norm=True),
                     task_parallelism=parallelism)
    check_meta_gradient(maml, episode("float64"))


def test_per_task_meta_gradients_compile_with_xla():
    """The in-loop per-task meta-gradients of a convnet with batch norm
    (the default path for convolutional models, and on GPU/TPU under XLA)
    give the same step compiled with XLA as in graph mode."""
    keras.utils.set_random_seed(2)
    net = keras.Sequential([
        keras.Input((6, 6, 1)), keras.layers.Conv2D(3, 3, strides=2),
        keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.Flatten(), keras.layers.Dense(2)])
    rng = np.random.default_rng(0)
    data = dict(
        support_x=rng.normal(size=(3, 4, 6, 6, 1)).astype("float32"),
        support_y=np.tile([0, 1, 0, 1], (3, 1)).astype("int32"),
        query_x=rng.normal(size=(3, 6, 6, 6, 1)).astype("float32"),
        query_y=np.tile([0, 1, 1, 0, 0, 1], (3, 1)).astype("int32"))
    maml = keras_meta.MAML(net, inner_learning_rate=0.1, inner_steps=2)
    maml.compile(optimizer="sgd", loss=keras.losses.
                 SparseCategoricalCrossentropy(from_logits=True))
    assert task_parallel.choose(maml) == "sequential"
    results = [tf.function(lambda d: meta_gradients.compute(maml, d),
                           jit_compile=jit)(data)
               for jit in (False, True)]
    flat = [tf.nest.flatten(r[:3]) for r in results]
    assert len(flat[0]) == len(flat[1])
    for a, b in zip(*flat):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4,
                                   atol=1e-5)
    assert np.abs(results[0][1][0].numpy()).max() > 0


def test_exact_moments_values_match_tf():
    x = tf.random.normal((4, 3, 5), seed=1)
    for keepdims in (False, True):
        for got, want in zip(batch_norm.moments(x, [0, 1], keepdims),
                             tf.nn.moments(x, [0, 1], keepdims=keepdims)):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5,
                                       atol=1e-6)


def test_first_order_gradient_is_query_gradient_at_adapted_weights():
    data = episode("float64")
    second = make_maml("maml", tiny_net("float64"))
    first = make_maml("fomaml", tiny_net("float64"))
    _, g2, _, _ = meta_gradients.compute(second, data)
    _, g1, _, _ = meta_gradients.compute(first, data)

    # FOMAML: the mean over tasks of grad L_query(theta') at the adapted
    # weights theta', with theta' from plain SGD steps on the support set.
    expected = [np.zeros(v.shape) for v in first.model.trainable_variables]
    tasks = data["support_x"].shape[0]
    for t in range(tasks):
        adapted = first.adapt(data["support_x"][t], data["support_y"][t],
                              steps=2)
        with tf.GradientTape() as tape:
            pred = adapted(data["query_x"][t], training=True)
            loss = tf.reduce_mean(tf.square(pred - data["query_y"][t]))
        for e, g in zip(expected, tape.gradient(
                loss, adapted.trainable_variables)):
            e += g.numpy() / tasks
    for got, want in zip(g1, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-10)
    differences = [np.abs(a.numpy() - b.numpy()).max() for a, b in zip(g1, g2)]
    assert max(differences) > 1e-4, differences


# ----------------------------------------------------------- adaptation


def test_one_adaptation_step_is_sgd_and_meta_weights_stay():
    keras.utils.set_random_seed(1)
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    maml = keras_meta.MAML(net, inner_learning_rate=0.05)
    maml.compile(loss="mse")
    x = np.random.RandomState(0).randn(8, 3).astype("float32")
    y = np.random.RandomState(1).randn(8, 1).astype("float32")
    w, b = [v.numpy() for v in net.trainable_variables]
    residual = x @ w + b - y
    grad_w = 2 * x.T @ residual / len(x)
    grad_b = 2 * residual.mean(axis=0)

    adapted = maml.adapt(x, y, steps=1)

    np.testing.assert_allclose(adapted.layers[-1].kernel.numpy(),
                               w - 0.05 * grad_w, rtol=1e-5)
    np.testing.assert_allclose(adapted.layers[-1].bias.numpy(),
                               b - 0.05 * grad_b, rtol=1e-5)
    np.testing.assert_array_equal(net.trainable_variables[0].numpy(), w)
    np.testing.assert_array_equal(net.trainable_variables[1].numpy(), b)
    assert adapted is not net


def test_anil_adapts_only_the_head():
    maml = make_maml("anil", tiny_net())
    assert maml.adapted_layers == ["head"]
    data = episode()
    adapted = maml.adapt(data["support_x"][0], data["support_y"][0])
    body, head = maml.model.get_layer("body"), maml.model.get_layer("head")
    np.testing.assert_array_equal(
        adapted.get_layer("body").kernel.numpy(), body.kernel.numpy())
    assert not np.allclose(adapted.get_layer("head").kernel.numpy(),
                           head.kernel.numpy())


def test_zeroed_head_is_plain_maml_from_a_zero_head_every_step():
    """The zeroing trick: the head starts at zero and stays there; the body
    takes plain MAML's meta-step from a zero head."""
    data = episode()
    zeroed = make_maml("zeroed_head", tiny_net(seed=1))
    head = zeroed.model.get_layer("head")
    assert zeroed.zeroed_layers == ["head"]
    assert not np.any(head.kernel.numpy()) and not np.any(head.bias.numpy())
    plain = make_maml("maml", tiny_net(seed=1))
    for v in plain.model.get_layer("head").trainable_variables:
        v.assign(tf.zeros_like(v))
    for _ in range(2):
        zeroed.train_on_batch(data)
        plain.train_on_batch(data)
        for v in plain.model.get_layer("head").trainable_variables:
            assert np.any(v.numpy())  # plain MAML moves its head ...
            v.assign(tf.zeros_like(v))  # ... which the trick resets
    np.testing.assert_allclose(
        zeroed.model.get_layer("body").kernel.numpy(),
        plain.model.get_layer("body").kernel.numpy(), rtol=1e-6)
    assert not np.allclose(zeroed.model.get_layer("body").kernel.numpy(),
                           tiny_net(seed=1).get_layer("body").kernel.numpy())
    assert not np.any(head.kernel.numpy()) and not np.any(head.bias.numpy())
    adapted = zeroed.adapt(data["support_x"][0], data["support_y"][0])
    assert np.any(adapted.get_layer("head").kernel.numpy())


def test_task_losses_match_adapt_then_evaluate():
    maml = make_maml("maml", tiny_net())
    data = episode()
    losses = maml.task_losses(data, steps=3).numpy()
    assert losses.shape == (3, 4)
    for t in range(3):
        adapted = maml.adapt(data["support_x"][t], data["support_y"][t],
                             steps=3)
        pred = adapted(data["query_x"][t], training=True)
        want = float(tf.reduce_mean(tf.square(pred - data["query_y"][t])))
        np.testing.assert_allclose(losses[t, -1], want, rtol=1e-5)


def test_predict_and_evaluate_on_episodes():
    maml = make_maml("maml", tiny_net())
    maml.compile(loss="mse", metrics=["mae"])
    data = episode()
    preds = maml.predict(tf.data.Dataset.from_tensors(data), verbose=0)
    assert preds.shape == (3, 6, 1)
    logs = maml.evaluate(tf.data.Dataset.from_tensors(data), verbose=0,
                         return_dict=True)
    for key in ("loss", "pre_adapt_loss", "post_adapt_loss",
                "pre_adapt_mean_absolute_error",
                "post_adapt_mean_absolute_error"):
        assert key in logs, logs
    losses = maml.task_losses(data, steps=2).numpy()
    np.testing.assert_allclose(logs["pre_adapt_loss"], losses[:, 0].mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(logs["post_adapt_loss"], losses[:, -1].mean(),
                               rtol=1e-5)
    for k in (1, 2):
        np.testing.assert_allclose(logs[f"query_loss_after_step_{k}"],
                                   losses[:, k].mean(), rtol=1e-5)
    train_logs = maml.fit(tf.data.Dataset.from_tensors(data), verbose=0)
    assert "query_loss_after_step_1" not in train_logs.history
    # Plain inputs: the meta-model itself.
    x = np.linspace(-1, 1, 5, dtype="float32")[:, None]
    np.testing.assert_allclose(maml.predict(x, verbose=0),
                               maml.model.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-7)  # XLA vs not


# --------------------------------------------------------------- variants


def test_learned_rate_shapes():
    net = tiny_net()
    meta_sgd = keras_meta.MetaSGD(net)
    assert [tuple(r.shape) for r in meta_sgd.inner_rate_variables] == [
        tuple(v.shape) for v in net.trainable_variables]
    plus = keras_meta.MAMLPlusPlus(tiny_net(), inner_steps=3)
    assert [tuple(r.shape) for r in plus.inner_rate_variables] == [(3,)] * 4
    assert keras_meta.MAML(tiny_net()).inner_rate_variables == []


@pytest.mark.parametrize("progress, expected", [
    (0.0, [1 / 3, 1 / 3, 1 / 3]),
    (0.5, [1 / 6, 1 / 6, 2 / 3]),
    (1.0, [0.0, 0.0, 1.0]),
    (7.0, [0.0, 0.0, 1.0]),
])
def test_multi_step_loss_weights(progress, expected):
    np.testing.assert_allclose(multi_step_loss_weights(3, progress), expected,
                               atol=1e-7)


def test_meta_sgd_learns_its_rates():
    maml = make_maml("meta_sgd", tiny_net())
    before = [r.numpy().copy() for r in maml.inner_rate_variables]
    maml.fit(keras_meta.data.sinusoid(shots=5, meta_batch_size=4, seed=0),
             steps_per_epoch=5, verbose=0)
    after = [r.numpy() for r in maml.inner_rate_variables]
    assert any(not np.allclose(a, b) for a, b in zip(before, after))


# ----------------------------------------------------------- save / load


@pytest.mark.parametrize("variant", ["maml", "meta_sgd", "maml_plus_plus",
                                     "anil", "zeroed_head"])
def test_save_load_round_trip(variant, tmp_path):
    maml = make_maml(variant, tiny_net(batch_norm=True))
    maml.fit(keras_meta.data.sinusoid(shots=5, meta_batch_size=4, seed=0),
             steps_per_epoch=3, verbose=0)
    path = str(tmp_path / "maml.keras")
    maml.save(path)
    loaded = keras.models.load_model(path)

    assert type(loaded) is type(maml)
    # JSON, as in the file: tuples and lists are the same thing there.
    assert json.dumps(loaded.get_config(), sort_keys=True) == json.dumps(
        maml.get_config(), sort_keys=True)
    for a, b in zip(maml.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    data = episode()
    sx, sy, qx = data["support_x"][0], data["support_y"][0], data["query_x"][0]
    np.testing.assert_array_equal(
        maml.adapt(sx, sy).predict(qx, verbose=0),
        loaded.adapt(sx, sy).predict(qx, verbose=0))
    # Training continues identically: the optimizer state came along too.
    more = keras_meta.data.sinusoid(shots=5, meta_batch_size=4, seed=1)
    maml.fit(more, steps_per_epoch=2, verbose=0)
    loaded.fit(more, steps_per_epoch=2, verbose=0)
    for a, b in zip(maml.weights, loaded.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6,
                                   err_msg=a.path)


# ------------------------------------------------------------------- XLA


def test_xla_and_graph_steps_agree():
    results = []
    for jit in (False, True):
        maml = keras_meta.MAML(tiny_net(seed=3), inner_learning_rate=0.1,
                               inner_steps=2)
        maml.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse",
                     jit_compile=jit)
        maml.fit(keras_meta.data.sinusoid(shots=5, meta_batch_size=4, seed=0),
                 steps_per_epoch=3, verbose=0)
        # A Sequential Dense net with SGD: under XLA every task in one
        # program; in graph mode vectorized_map, which ran faster there.
        assert task_parallel.choose(maml) == ("batched" if jit
                                              else "vectorized")
        results.append([w.numpy() for w in maml.model.weights])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_fused_xla_steps_equal_keras_loop():
    """Under XLA with steps_per_execution > 1, MAML runs a call's meta-steps
    in one XLA program; the result is the one of Keras's step-by-step loop,
    also when the data runs out inside a call (5 batches, 3 per call)."""
    data = tf.data.Dataset.from_tensor_slices(
        {k: tf.stack([v] * 5) + tf.random.normal([5] + v.shape, seed=1)
         for k, v in episode().items()})
    data = data.map(lambda e: e).batch(1).map(
        lambda e: {k: v[0] for k, v in e.items()})
    results = []
    for steps_per_execution in (1, 3):
        maml = keras_meta.MAML(tiny_net(seed=6), inner_learning_rate=0.1)
        maml.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse",
                     jit_compile=True,
                     steps_per_execution=steps_per_execution)
        history = maml.fit(data, epochs=2, verbose=0)
        assert int(maml.optimizer.iterations.numpy()) == 10
        assert getattr(maml.train_function, "fused_steps", 1) == (
            steps_per_execution)
        results.append(([w.numpy() for w in maml.weights],
                        history.history["loss"]))
    for a, b in zip(results[0][0], results[1][0]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6)


@pytest.mark.parametrize("kwargs", [
    dict(), dict(first_order=True), dict(inner_optimizer="meta_sgd"),
    dict(inner_optimizer="lslr", multi_step_loss=True),
    dict(adapted_layers=["head"]), dict(inner_optimizer="lstm"),
])
def test_batched_tasks_equal_per_task_map(kwargs):
    """task_parallelism="batched" (stacked weights, one program for all
    tasks) computes what mapping over tasks computes."""
    data = episode()
    results = []
    for mode in ("batched", "sequential"):
        maml = keras_meta.MAML(tiny_net(seed=5), inner_learning_rate=0.1,
                               inner_steps=2, task_parallelism=mode, **kwargs)
        maml.compile(optimizer="sgd", loss="mse")
        maml.optimizer.iterations.assign(1)  # mid-anneal for the MSL
        loss, grads, outputs, _ = meta_gradients.compute(maml, data)
        results.append([loss, *grads, outputs["losses"],
                        *task_parallel.pre_adaptation_pass(maml, data),
                        outputs["post_pred"]])
    for a, b in zip(*results):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5,
                                   atol=1e-6)


def test_auto_parallelism_per_model():
    def auto(net, jit=True, **kwargs):
        maml = keras_meta.MAML(net, **kwargs)
        maml.compile(loss="mse", jit_compile=jit)
        return task_parallel.choose(maml)

    assert auto(tiny_net()) == "batched"
    assert auto(tiny_net(), jit=False) == "vectorized"
    # Not a plain Dense stack, or a rule that may not be elementwise.
    assert auto(tiny_net(batch_norm=True)) == "sequential"
    assert auto(tiny_net(), inner_optimizer="lstm") == "sequential"
    with pytest.raises(ValueError, match="needs a keras.Sequential of plain"):
        keras_meta.MAML(tiny_net(batch_norm=True), task_parallelism="batched")


# ------------------------------------------------------------ batch norm


def test_batch_norm_transductive_and_moving_statistics():
    data = episode(queries=6)
    modes = {}
    for transductive in (True, False):
        maml = keras_meta.MAML(tiny_net(batch_norm=True, seed=4),
                               transductive=transductive)
        maml.compile(loss="mse")
        moving = maml.model.get_layer("bn").moving_mean.numpy().copy()
        maml.fit(tf.data.Dataset.from_tensors(data).repeat(), steps_per_epoch=2,
                 verbose=0)
        assert not np.allclose(moving,
                               maml.model.get_layer("bn").moving_mean.numpy())
        full = maml.predict(tf.data.Dataset.from_tensors(data), verbose=0)
        half = {**data, "query_x": data["query_x"][:, :3],
                "query_y": data["query_y"][:, :3]}
        part = maml.predict(tf.data.Dataset.from_tensors(half), verbose=0)
        modes[transductive] = np.abs(full[:, :3] - part).max()
    # With batch statistics a query prediction depends on the other queries.
    assert modes[True] > 1e-4
    assert modes[False] < 1e-6


# ------------------------------------------------------------- learning


def test_sinusoid_meta_training_learns_to_adapt(sinusoid_mlp):
    net = sinusoid_mlp(40)
    maml = keras_meta.MAML(net, inner_learning_rate=0.01, inner_steps=1)
    maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse",
                 steps_per_execution=50)
    held_out = next(iter(keras_meta.data.sinusoid(
        shots=10, meta_batch_size=200, seed=123)))
    untrained = maml.task_losses(held_out, steps=10).numpy().mean(axis=0)
    history = maml.fit(keras_meta.data.sinusoid(shots=10, seed=0),
                       steps_per_epoch=500, epochs=4, verbose=0)
    trained = maml.task_losses(held_out, steps=10).numpy().mean(axis=0)

    curve = history.history["post_adapt_loss"]
    assert curve[-1] < 0.6 * curve[0], curve
    # After meta-training, 10 steps on 10 points fit a new sinusoid far
    # better than the meta-model does before adapting, and far better than
    # the same adaptation from the untrained initialization.
    assert trained[10] < 0.3 * trained[0], trained
    assert trained[10] < 0.5 * untrained[10], (trained, untrained)


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize("kwargs, message", [
    (dict(inner_steps=0), "`inner_steps` must be an int >= 1; got 0"),
    (dict(inner_steps=1.5), "`inner_steps` must be an int >= 1; got 1.5"),
    (dict(eval_inner_steps=-2), "`eval_inner_steps` must be an int >= 1"),
    (dict(inner_learning_rate=-0.1), "`inner_learning_rate` must be a finite float >= 0; got -0.1"),
    (dict(inner_optimizer="per_layer"), "got str: 'per_layer'"),
    (dict(adapted_layers=["nope"]), "'nope', which is not a layer"),
    (dict(zeroed_layers="head"), "`zeroed_layers` must be None, True or a "
     "list of layer names; got 'head'"),
    (dict(zeroed_layers=["nope"]), "`zeroed_layers` names 'nope', which is "
     "not a layer"),
    (dict(adapted_layers=["head"], zeroed_layers=["body"]), "`zeroed_layers` "
     "['body'] must adapt in the inner loop (else they stay zero); "
     "`adapted_layers` is ['head']."),
    (dict(task_parallelism="threads"), "got 'threads'"),
    (dict(track_pre_adaptation=0), "`track_pre_adaptation` must be a bool "
     "or an int >= 1 (run the pass on every N-th meta-step); got 0"),
    (dict(track_pre_adaptation=2.5), "int >= 1 (run the pass on every "
     "N-th meta-step); got 2.5"),
])
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        keras_meta.MAML(tiny_net(), **kwargs)


def test_model_without_trainable_variables():
    net = tiny_net()
    net.trainable = False
    with pytest.raises(ValueError, match="has no trainable variables"):
        keras_meta.MAML(net)


def test_unbuilt_model():
    with pytest.raises(ValueError, match="must be built"):
        keras_meta.MAML(keras.Sequential([keras.layers.Dense(1)]))


@pytest.mark.parametrize("change, message", [
    (dict(query_x=tf.zeros([3, 6, 2])), "'support_x' and 'query_x' must agree"),
    (dict(support_y=tf.zeros([3, 4, 1])), "'support_x' and 'support_y' must"),
    (dict(query_y=tf.zeros([3, 6, 1], tf.float64)), "same dtype"),
])
def test_mismatched_episode_shapes(change, message):
    maml = make_maml("maml", tiny_net())
    data = {**episode(), **change}
    with pytest.raises(ValueError, match=message):
        maml.fit(tf.data.Dataset.from_tensors(data), verbose=0)


def test_missing_episode_key():
    maml = make_maml("maml", tiny_net())
    data = episode()
    del data["query_y"]
    with pytest.raises(ValueError, match="must be a dict with keys"):
        maml.fit(tf.data.Dataset.from_tensors(data), verbose=0)


def test_adapt_rejects_a_task_axis():
    maml = make_maml("maml", tiny_net())
    data = episode()
    with pytest.raises(ValueError, match=r"support_x should have shape \[n, 1\]"):
        maml.adapt(data["support_x"], data["support_y"])


def test_non_finite_meta_gradient_skips_the_step():
    maml = make_maml("maml", tiny_net())
    data = episode()
    data["query_y"] = tf.tensor_scatter_nd_update(
        data["query_y"], [[0, 0, 0]], [np.nan])
    before = [w.numpy() for w in maml.model.weights]
    logs = maml.fit(tf.data.Dataset.from_tensors(data), verbose=0).history
    assert logs["skipped_steps"] == [1]
    for a, b in zip(before, maml.model.weights):
        np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize("variant", ["maml", "maml_plus_plus"])
def test_untracked_pre_adaptation_trains_identically(variant):
    """track_pre_adaptation=False skips a pass that only feeds the logs:
    the same weights after two meta-steps, and no pre_adapt_* in fit."""
    data = tf.data.Dataset.from_tensors(episode(tasks=2)).repeat()
    weights, logs = [], []
    for track in (True, False):
        maml = make_maml(variant, tiny_net(batch_norm=True),
                         track_pre_adaptation=track)
        maml.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse",
                     metrics=["mae"])
        history = maml.fit(data, steps_per_epoch=2, verbose=0)
        weights.append([v.numpy() for v in maml.model.variables])
        logs.append(history.history)
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert "pre_adapt_mean_absolute_error" in logs[0]
    assert not any(k.startswith("pre_adapt") for k in logs[1]), logs[1]
    np.testing.assert_allclose(logs[0]["post_adapt_loss"],
                               logs[1]["post_adapt_loss"], rtol=1e-6)
    assert maml.get_config()["track_pre_adaptation"] is False
    assert "pre_adapt_loss" in maml.evaluate(data.take(1), verbose=0,
                                             return_dict=True)


class _BatchLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append(dict(logs))


def test_pre_adaptation_every_n_steps():
    """track_pre_adaptation=3 runs the logging pass on meta-steps 0, 3, 6
    (and on the first step of each epoch): the same training, and the
    epoch's pre_adapt_loss is the mean of those steps' values, which the
    running means of an every-step run give back."""
    data = keras_meta.data.sinusoid(shots=5, queries=6, meta_batch_size=2,
                                    seed=4)
    runs = {}
    for track in (True, 3):
        maml = make_maml("maml", tiny_net(batch_norm=True),
                         track_pre_adaptation=track)
        batches = _BatchLogs()
        history = maml.fit(data, steps_per_epoch=7, epochs=2, verbose=0,
                           callbacks=[batches])
        runs[track] = (maml, history.history, batches.logs)
    every, sampled = runs[True], runs[3]
    for a, b in zip(every[0].model.weights, sampled[0].model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6,
                                   atol=1e-7)
    # Per-step values from the every-step run's running means.
    means = [logs["pre_adapt_loss"] for logs in every[2]]
    per_step = []
    for epoch in range(2):
        m = means[7 * epoch:7 * (epoch + 1)]
        per_step += [m[0]] + [(k + 1) * m[k] - k * m[k - 1]
                              for k in range(1, 7)]
    # Epoch 1: iterations 0, 3, 6; epoch 2 (7..13): 7 (first of the
    # epoch), 9 and 12.
    for epoch, steps in enumerate([(0, 3, 6), (7, 9, 12)]):
        np.testing.assert_allclose(
            sampled[1]["pre_adapt_loss"][epoch],
            np.mean([per_step[i] for i in steps]), rtol=1e-4)
        assert not np.isclose(sampled[1]["pre_adapt_loss"][epoch],
                              every[1]["pre_adapt_loss"][epoch], rtol=1e-3)
    (pre_loss,) = [m for m in sampled[0].metrics if m.name == "pre_adapt_loss"]
    assert float(pre_loss.count.numpy()) == 3
    assert sampled[0].get_config()["track_pre_adaptation"] == 3
    # A numpy int (e.g. from a flag parser) is stored as a JSON int.
    config = keras_meta.MAML(tiny_net(), track_pre_adaptation=np.int64(
        4)).get_config()
    assert json.loads(json.dumps(config))["track_pre_adaptation"] == 4


@pytest.mark.parametrize("rule", ["sgd", "lstm"])
def test_run_eagerly_trains_as_the_compiled_step(rule):
    # Eager fit used to fail on its logs (a variable, not a tensor).
    def trained(run_eagerly):
        keras.utils.set_random_seed(0)
        net = keras.Sequential([keras.Input((1,)),
                                keras.layers.Dense(4, activation="tanh"),
                                keras.layers.Dense(1)])
        maml = keras_meta.MAML(net, inner_learning_rate=0.1, inner_steps=2,
                               inner_optimizer=rule)
        maml.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse",
                     run_eagerly=run_eagerly, jit_compile=False)
        logs = maml.fit(keras_meta.data.sinusoid(shots=4, queries=5,
                                                 meta_batch_size=2, seed=0),
                        steps_per_epoch=2, verbose=0).history
        assert logs["skipped_steps"] == [0]
        return [v.numpy() for v in maml.trainable_variables]

    for a, b in zip(trained(True), trained(False)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

"""Learned inner loops: MAML(inner_optimizer=...) with each update rule."""

import os

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_meta
from keras_meta.maml import InnerLSTM
from keras_meta.maml import InnerOptimizer
from keras_meta.maml import InnerSGD
from keras_meta.maml import meta_gradients
from keras_meta.rules import lstm as lstm_rule


def tiny_net(dtype="float32", hidden=4, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((1,), dtype=dtype),
        keras.layers.Dense(hidden, activation="tanh", dtype=dtype,
                           name="body"),
        keras.layers.Dense(1, dtype=dtype, name="head"),
    ])


def episode(dtype="float32", tasks=3, shots=5, queries=6, seed=0):
    data = next(iter(keras_meta.data.sinusoid(
        shots=shots, queries=queries, meta_batch_size=tasks, seed=seed)))
    return {k: tf.cast(v, dtype) for k, v in data.items()}


def make(rule, dtype="float32", jit_compile=False, **kwargs):
    maml = keras_meta.MAML(tiny_net(dtype), inner_learning_rate=0.1,
                           inner_steps=2, inner_optimizer=rule, **kwargs)
    maml.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse",
                 jit_compile=jit_compile)
    return maml


def lstm_weights(maml):
    rule = maml.inner_optimizer
    return rule.phi(maml.inner_optimizer_variables)


def zero_lstm_output(maml):
    for key in ("out/kernel", "out/bias"):
        lstm_weights(maml)[key].assign(
            np.zeros(lstm_weights(maml)[key].shape))


# ------------------------------------------------------ resolving the rule


@pytest.mark.parametrize("rule, cls, rates, weights", [
    ("sgd", InnerSGD, None, 0),
    ("meta_sgd", InnerSGD, "per_parameter", 4),
    ("lslr", InnerSGD, "per_step", 4),
    ("lstm", InnerLSTM, None, 4),  # kernel, bias, out kernel, out bias
])
def test_named_rules(rule, cls, rates, weights):
    maml = make(rule)
    assert type(maml.inner_optimizer) is cls
    assert maml.inner_optimizer.learned_rates == rates
    assert len(maml.inner_optimizer_variables) == weights
    assert len(maml.inner_rate_variables) == (weights if rates else 0)
    # The rule's weights are MAML weights, meta-trained by the optimizer.
    ids = {id(v) for v in maml.trainable_variables}
    assert all(id(v) in ids for v in maml.inner_optimizer_variables)


@pytest.mark.parametrize("rates, rule", [
    ("per_parameter", "meta_sgd"), ("per_step", "lslr")])
def test_learn_inner_rates_is_the_same_rule(rates, rule):
    """Configs from 0.1.0/0.2.0 name the rule by `learn_inner_rates`."""
    data = episode()
    config = make("sgd").get_config()
    del config["inner_optimizer"]
    config["learn_inner_rates"] = rates
    old = keras_meta.MAML.from_config(config)
    old.model.set_weights(tiny_net().get_weights())
    old.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse",
                jit_compile=False)
    new = make(rule)
    for maml in (old, new):
        maml.train_on_batch(data)
    for a, b in zip(old.get_weights(), new.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs, message", [
    (dict(inner_optimizer="adam"), "must be one of .* got str: 'adam'"),
    (dict(inner_optimizer=3), "got int: 3"),
    (dict(learn_inner_rates="per_parameter"), "Unrecognized keyword"),
])
def test_bad_inner_optimizer(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_meta.MAML(tiny_net(), **kwargs)


def test_bad_rule_arguments():
    with pytest.raises(ValueError, match="`hidden_size` must be an int >= 1;"
                       " got 0"):
        InnerLSTM(hidden_size=0)
    with pytest.raises(ValueError, match="`learned_rates` must be None .* "
                       "got 'per_layer'"):
        InnerSGD("per_layer")


def test_custom_rule_object():
    class SignSGD(InnerOptimizer):
        def update(self, meta_params, grads, state, values, step):
            return [-self.learning_rate * tf.sign(g) for g in grads], state

    maml = make(SignSGD())
    data = episode(tasks=1)
    adapted = maml.adapt(data["support_x"][0], data["support_y"][0], steps=1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(
            maml.model(data["support_x"][0]) - data["support_y"][0]))
    grads = tape.gradient(loss, maml.model.trainable_variables)
    for v, g, a in zip(maml.model.trainable_variables, grads,
                       adapted.trainable_variables):
        np.testing.assert_allclose(a.numpy(), (v - 0.1 * tf.sign(g)).numpy(),
                                   rtol=1e-6)


# ------------------------------------------- LSTM rule reduces to MAML


@pytest.mark.parametrize("parallelism, first_order", [
    ("sequential", False), ("vectorized", True)])
def test_lstm_with_zero_output_is_plain_maml(parallelism, first_order):
    data = episode()
    plain = make("sgd", task_parallelism=parallelism, first_order=first_order)
    lstm = make("lstm", task_parallelism=parallelism, first_order=first_order)
    zero_lstm_output(lstm)
    loss_p, grads_p, out_p, _ = meta_gradients.compute(plain, data)
    loss_l, grads_l, out_l, _ = meta_gradients.compute(lstm, data)
    # Same inner steps to the last bit, so the same query losses.
    np.testing.assert_array_equal(out_l["losses"].numpy(),
                                  out_p["losses"].numpy())
    np.testing.assert_array_equal(out_l["post_pred"].numpy(),
                                  out_p["post_pred"].numpy())
    # The meta-gradient of the initialization: the LSTM path adds exact
    # zeros, but in another order of operations.
    for gp, gl in zip(grads_p, grads_l[:len(grads_p)]):
        np.testing.assert_allclose(gl.numpy(), gp.numpy(), rtol=1e-6,
                                   atol=1e-7)
    # The output layer still gets a meta-gradient: the rule can learn.
    names = [v.name for v in lstm.inner_optimizer_variables]
    out_kernel = grads_l[len(grads_p) + names.index("inner_lstm_out_kernel")]
    assert np.abs(out_kernel.numpy()).max() > 0


def test_lstm_with_zero_output_is_plain_maml_under_xla():
    # One XLA compile (slow on CPU): the LSTM rule's meta-step under XLA
    # against plain MAML's in graph mode.
    data = episode()
    plain = make("sgd")
    lstm = make("lstm", jit_compile=True, task_parallelism="sequential")
    zero_lstm_output(lstm)
    for maml in (plain, lstm):
        maml.train_on_batch(data)
    for a, b in zip(plain.model.get_weights(), lstm.model.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    # The rule's output layer moved away from zero: it was meta-trained.
    assert np.abs(lstm_weights(lstm)["out/kernel"].numpy()).max() > 0


# -------------------------------------------------------- meta-gradients


@pytest.mark.parametrize("feature_gradients, steps", [(True, 2), (False, 1)])
def test_lstm_meta_gradient_matches_finite_differences(
        feature_gradients, steps, check_meta_gradient):
    # With feature_gradients=True the meta-gradient is the exact one of
    # every variable. The default drops the second derivatives through the
    # LSTM's inputs; with one inner step that leaves the rule's own
    # meta-gradient exact (its inputs do not depend on it), not the
    # initialization's.
    rule = InnerLSTM(hidden_size=1, feature_gradients=feature_gradients)
    maml = keras_meta.MAML(
        tiny_net("float64", hidden=2), inner_learning_rate=0.1,
        inner_steps=steps, inner_optimizer=rule)
    maml.compile(optimizer="sgd", loss="mse")
    # A larger output layer than the initial one, so that the LSTM's
    # modulation and direction matter in both inner steps.
    phi = lstm_weights(maml)
    phi["out/kernel"].assign(phi["out/kernel"].numpy() * 100 + 0.5)
    phi["out/bias"].assign([1.0, -2.0])
    numerics = check_meta_gradient(maml, episode("float64", tasks=2),
                                   rule_only=not feature_gradients)
    # Every meta-parameter of the rule moves the meta-loss.
    for numeric in numerics:
        assert np.abs(numeric).max() > 1e-6


# ---------------------------------------------------------- adaptation


def test_adapt_uses_the_lstm_rule():
    maml = make("lstm")
    phi = lstm_weights(maml)
    phi["out/bias"].assign([1.0, 2.0])  # visibly different from SGD
    data = episode(tasks=1)
    x, y = data["support_x"][0], data["support_y"][0]
    adapted = maml.adapt(x, y, steps=2)
    # By hand: two steps of lstm_rule.apply, its state carried between.
    values = [tf.convert_to_tensor(v) for v in maml.model.trainable_variables]
    cfg = maml.inner_optimizer.rule_config
    state = [lstm_rule.init_state(v, cfg) for v in values]
    phi_t = {k: tf.convert_to_tensor(v) for k, v in phi.items()}
    for _ in range(2):
        with tf.GradientTape() as tape:
            tape.watch(values)
            pred, _ = maml.model.stateless_call(values, [], x)
            loss = tf.reduce_mean(tf.square(pred - y))
        grads = tape.gradient(loss, values)
        updates, state = lstm_rule.apply(phi_t, grads, state, cfg)
        values = [v + u for v, u in zip(values, updates)]
    sgd = make("sgd").adapt(x, y, steps=2)
    for a, b, s in zip(adapted.get_weights(), values, sgd.get_weights()):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-7)
        assert not np.allclose(a, s)
    # The per-step update sizes come from the same rule.
    norms = maml.inner_update_norms(data, steps=2).numpy()
    first = np.sqrt(np.mean(np.concatenate([
        (a - v.numpy()).ravel() for a, v in zip(
            maml.adapt(x, y, steps=1).get_weights(),
            maml.model.trainable_variables)]) ** 2))
    np.testing.assert_allclose(norms[0, 0], first, rtol=1e-5)
    assert norms.shape == (1, 2)


# ------------------------------------------------------------ learning
# (Save and load of every rule: tests/maml/test_variants_contract.py.)


@pytest.mark.parametrize("rule", ["sgd", "meta_sgd", "lslr", "lstm"])
def test_short_sinusoid_run_learns(rule, sinusoid_mlp):
    net = sinusoid_mlp(20)
    maml = keras_meta.MAML(net, inner_learning_rate=0.01, inner_steps=1,
                           inner_optimizer=rule)
    # One meta-step per call: XLA's fused multi-step program (compiled
    # once per call size, tests/models/test_maml.py's fused test) costs
    # more to build than these 300 steps take; same steps, same numbers.
    maml.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse",
                 steps_per_execution=1)
    held_out = next(iter(keras_meta.data.sinusoid(
        shots=10, meta_batch_size=100, seed=123)))
    before = maml.task_losses(held_out, steps=1).numpy().mean(axis=0)
    maml.fit(keras_meta.data.sinusoid(shots=10, seed=0),
             steps_per_epoch=300, epochs=1, verbose=0)
    after = maml.task_losses(held_out, steps=1).numpy().mean(axis=0)
    # One adapted step after 300 meta-steps beats the untrained one by far,
    # and beats not adapting at all.
    assert after[1] < 0.5 * before[1], (before, after)
    assert after[1] < 0.8 * after[0], after


# ------------------------------------------------------------ TensorBoard


def test_inner_optimizer_summary_writes_rule_and_update_sizes(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    data = episode()
    maml = make("lstm")
    log_dir = os.path.join(tmp_path, "inner")
    maml.fit(tf.data.Dataset.from_tensors(data).repeat(), steps_per_epoch=2,
             epochs=1, verbose=0, callbacks=[
                 keras_meta.callbacks.InnerOptimizerSummary(log_dir, data)])
    acc = event_accumulator.EventAccumulator(
        log_dir, size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    for tag in ("rule/update_size/step_1", "rule/update_size/step_2",
                "rule/update_size/step_1/tasks",
                "rule/weights/inner_lstm_out_kernel"):
        assert tag in tags, tags
    logged = tf.make_ndarray(
        acc.Tensors("rule/update_size/step_1")[0].tensor_proto)
    expected = maml.inner_update_norms(data).numpy()[:, 0].mean()
    np.testing.assert_allclose(logged, expected, rtol=1e-5)

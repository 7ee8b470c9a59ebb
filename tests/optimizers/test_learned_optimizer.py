"""Tests of `keras_meta.LearnedOptimizer` in Keras training."""

import dataclasses
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta
from keras_meta.rules import lstm as lstm_rule
from keras_meta.optimizers import rule_kinds
from keras_meta.optimizers import weights_io


def _data(n=128, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.rand(n, 6, 6, 1).astype("float32")
    y = (x.reshape(n, -1)[:, :8].sum(1) > 4).astype("int32")
    return x, y


def _model(seed=0):
    # Mixed variable shapes: 4-D conv kernel, 1-D biases, 2-D dense kernel.
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6, 6, 1)),
        keras.layers.Conv2D(3, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(2),
    ])


def _compile(model, jit, **opt_kwargs):
    model.compile(
        optimizer=keras_meta.LearnedOptimizer(**opt_kwargs),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


SHIPPED = sorted(weights_io.PRETRAINED)
# One per rule architecture: per-tensor, coordinatewise Adam-modulating,
# and the quadratic specialist's secant heavy ball (descent="momentum").
RULES = ["per_tensor", "coordinatewise", "quadratic"]


def test_default_loads_shipped_weights():
    opt = keras_meta.LearnedOptimizer()
    phi, cfg = weights_io.load_phi(
        weights_io.pretrained_path(weights_io.DEFAULT_PRETRAINED))
    assert weights_io.DEFAULT_PRETRAINED == "normalized"
    assert opt.rule_config == dataclasses.replace(
        cfg, **weights_io.DEFAULT_RULE)
    assert opt.rule_config.dense_table_decay is False
    # The default averages; named weights keep Keras's default.
    assert opt.use_ema is True
    assert keras_meta.LearnedOptimizer(weights="normalized").use_ema is False
    assert keras_meta.LearnedOptimizer(use_ema=False).use_ema is False
    restored = keras_meta.LearnedOptimizer.from_config(opt.get_config())
    # Some of the default rule's untrained fields, without a rule_type.
    variant = keras_meta.LearnedOptimizer(rule={"dense_table_decay": True})
    assert variant.rule_config == cfg
    # A partial rule changes only its fields of the default's rule.
    lazy = keras_meta.LearnedOptimizer(rule={"lazy_tables": True})
    assert lazy.rule_config == dataclasses.replace(
        opt.rule_config, lazy_tables=True) and lazy.use_ema
    for o in (opt, restored, variant):
        assert o.use_ema
        for k, v in phi.items():
            np.testing.assert_array_equal(o.phi[k].numpy(), v)
    assert restored.rule_config == opt.rule_config
    with pytest.raises(ValueError, match="only the untrained fields"):
        keras_meta.LearnedOptimizer(rule={"hidden_size": 3})


def test_config_of_the_old_default_loads_per_tensor():
    # An optimizer saved with the default before 0.4.0 (`weights=None`,
    # the per-tensor LSTM's config) loads the per-tensor LSTM.
    phi, cfg = weights_io.load_phi(weights_io.pretrained_path("per_tensor"))
    old = keras_meta.LearnedOptimizer(weights="per_tensor").get_config()
    old["weights"] = None
    opt = keras_meta.LearnedOptimizer.from_config(old)
    assert opt.rule_config == cfg and opt.use_ema is False
    for k, v in phi.items():
        np.testing.assert_array_equal(opt.phi[k].numpy(), v)


@pytest.mark.parametrize("name", SHIPPED)
def test_named_shipped_weights_and_rule_lookup(name):
    phi, cfg = weights_io.load_phi(weights_io.pretrained_path(name))
    by_name = keras_meta.LearnedOptimizer(weights=name)
    # A config naming only the rule (as `from_config` of a model saved with
    # these weights) finds the same shipped file.
    by_rule = keras_meta.LearnedOptimizer(
        rule=rule_kinds.config_to_dict(cfg))
    for opt in (by_name, by_rule):
        assert opt.rule_config == cfg
        for k, v in phi.items():
            np.testing.assert_array_equal(opt.phi[k].numpy(), v)
    with pytest.raises(ValueError, match="Unknown pretrained"):
        weights_io.pretrained_path(name + "_typo")


@pytest.mark.parametrize("weights", RULES)
def test_fit_lowers_loss(weights):
    rng = np.random.RandomState(0)
    x = rng.randn(256, 8).astype("float32")
    y = (x @ rng.randn(8, 1) + 0.5).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)),
                              keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras_meta.LearnedOptimizer(weights=weights),
                  loss="mse")
    hist = model.fit(x, y, batch_size=32, epochs=8, shuffle=False, verbose=0)
    losses = hist.history["loss"]
    assert losses[-1] < 0.3 * losses[0], losses
    assert int(model.optimizer.nonfinite_count.numpy()) == 0


def test_quadratic_weights_as_keras_optimizer_match_the_meta_trainer():
    # The quadratic specialist driven by Keras (apply_gradients on a
    # variable) follows the meta-trainer's functional path step for step,
    # and optimizes the paper's quadratic.
    from keras_meta.rules import baselines
    from keras_meta.meta import problems
    from keras_meta.meta import trainer

    problem = problems.QuadraticProblem()
    instance = problem.sample(7)
    task = problem.task_tensors(instance)
    phi, cfg = weights_io.load_phi(weights_io.pretrained_path("quadratic"))
    steps = 40
    expected = trainer.run_rule(baselines.Learned(phi, cfg), problem,
                                instance, steps)
    x = keras.Variable(instance.params[0])
    opt = keras_meta.LearnedOptimizer(weights="quadratic")
    got = []
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = problem.loss([x.value], task, None)
        got.append(float(loss))
        opt.apply_gradients([(tape.gradient(loss, x.value), x)])
    got.append(float(problem.loss([x.value], task, None)))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert got[-1] < 0.1 * got[0], (got[0], got[-1])


def test_state_slots_match_variable_shapes():
    model = _compile(_model(), jit=False, weights="per_tensor")
    model.optimizer.build(model.trainable_variables)
    cfg = model.optimizer.rule_config
    for i, var in enumerate(model.trainable_variables):
        expected = lstm_rule.state_shapes(var.shape, cfg)
        for key, shape in expected.items():
            assert tuple(model.optimizer._slots[key][i].shape) == shape


@pytest.mark.parametrize("name", RULES)
def test_xla_and_graph_agree(name):
    x, y = _data()
    weights = []
    for jit in (False, True):
        model = _compile(_model(seed=3), jit=jit, weights=name)
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        weights.append([v.numpy() for v in model.trainable_variables])
        weights.append([v.numpy() for v in model.optimizer.variables])
    for a, b in zip(weights[0], weights[2]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(weights[1], weights[3]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", RULES)
def test_keras_save_load_round_trip_continues_identically(tmp_path, name):
    x, y = _data()
    model = _compile(_model(seed=1), jit=False, learning_rate=0.5,
                     weights=name)
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, keras_meta.LearnedOptimizer)
    assert loaded.optimizer.learning_rate.numpy() == pytest.approx(0.5)
    opt_a, opt_b = model.optimizer, loaded.optimizer
    assert len(opt_a.variables) == len(opt_b.variables)
    for a, b in zip(opt_a.variables, opt_b.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The LSTM state is non-trivial after a step.
    assert np.abs(opt_b._slots["h"][0].numpy()).max() > 0
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_default_save_load_continues_identically(tmp_path):
    # The default's weight average and its rule's untrained field are
    # saved, restored, and training goes on as without the round trip.
    x, y = _data()
    model = _compile(_model(seed=2), jit=False)
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    opt_a, opt_b = model.optimizer, loaded.optimizer
    assert opt_b.use_ema and opt_b.rule_config == opt_a.rule_config
    assert opt_b.rule_config.dense_table_decay is False
    assert len(opt_a.variables) == len(opt_b.variables)
    for a, b in zip(opt_a.variables, opt_b.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for m in (model, loaded):
        m.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kwargs", [
    {},
    {"learning_rate": 0.3, "clipnorm": 1.0},
    {"weights": "init", "rule": {"hidden_size": 4, "num_layers": 1}, "seed": 5},
])
def test_get_config_from_config_round_trip(kwargs):
    opt = keras_meta.LearnedOptimizer(**kwargs)
    config = opt.get_config()
    restored = keras_meta.LearnedOptimizer.from_config(config)
    assert restored.get_config() == config
    for k, v in opt.phi.items():
        np.testing.assert_array_equal(v.numpy(), restored.phi[k].numpy())
    serialized = keras.optimizers.serialize(opt)
    assert serialized["module"] is None or "keras_meta" in str(serialized)
    again = keras.optimizers.deserialize(serialized)
    assert isinstance(again, keras_meta.LearnedOptimizer)


def test_weights_from_path_and_dict(tmp_path):
    cfg = lstm_rule.RuleConfig(hidden_size=3, num_layers=1)
    phi = lstm_rule.init_phi(cfg, seed=7)
    path = os.path.join(tmp_path, "phi.npz")
    weights_io.save_phi(path, phi, cfg)
    for opt in (keras_meta.LearnedOptimizer(weights=path),
                keras_meta.LearnedOptimizer(weights=phi, rule=cfg.to_dict())):
        assert opt.rule_config == cfg
        for k, v in phi.items():
            np.testing.assert_array_equal(opt.phi[k].numpy(), v)


@pytest.mark.parametrize("jit,name", [(False, "per_tensor"),
                                      (True, "per_tensor"),
                                      (False, "coordinatewise"),
                                      (False, "normalized"),
                                      (True, "normalized")])
def test_nonfinite_gradient_is_skipped_and_counted(jit, name):
    a = keras.Variable(np.ones((2, 3), "float32"))
    b = keras.Variable(np.ones((4,), "float32"))
    opt = keras_meta.LearnedOptimizer(weights=name)
    opt.build([a, b])

    @tf.function(jit_compile=jit)
    def step(ga, gb):
        opt.apply([ga, gb], [a, b])

    good = tf.ones((4,))
    step(tf.constant([[1.0, np.nan, 0.0], [0.0, 0.0, 0.0]]), good)
    np.testing.assert_array_equal(a.numpy(), np.ones((2, 3)))
    assert np.all(b.numpy() != 1.0)  # the other variable is updated
    m = "m" if "m" in opt._slots else "m0"
    assert np.all(np.isfinite(opt._slots[m][0].numpy()))
    assert float(opt._slots["t"][0].numpy()) == 0.0
    assert float(opt._slots["t"][1].numpy()) == 1.0
    assert int(opt.nonfinite_count.numpy()) == 1
    assert opt.consecutive_nonfinite_steps == 1
    step(tf.fill((2, 3), np.inf), tf.constant([1.0, -np.inf, 0.0, 0.0]))
    np.testing.assert_array_equal(a.numpy(), np.ones((2, 3)))
    # Two skipped variables, one step.
    assert int(opt.nonfinite_count.numpy()) == 3
    assert opt.consecutive_nonfinite_steps == 2
    assert np.all(np.isfinite(b.numpy()))
    # A finite gradient afterwards updates again.
    step(tf.ones((2, 3)), good)
    assert np.all(a.numpy() < 1.0)
    assert int(opt.nonfinite_count.numpy()) == 3
    assert opt.consecutive_nonfinite_steps == 0


def test_first_skip_is_reported_once_with_the_variable_name(capfd):
    a = keras.Variable(np.ones((2,), "float32"), name="first_var")
    b = keras.Variable(np.ones((2,), "float32"), name="second_var")
    opt = keras_meta.LearnedOptimizer()
    opt.build([a, b])
    step = tf.function(lambda ga, gb: opt.apply([ga, gb], [a, b]))
    step(tf.ones((2,)), tf.constant([np.nan, 1.0]))
    step(tf.constant([np.nan, 1.0]), tf.constant([np.nan, 1.0]))
    err = capfd.readouterr().err
    assert err.count("LearnedOptimizer skipped an update") == 1
    assert "variable second_var" in err


def test_normalized_rule_checks_its_inputs_in_one_fused_step():
    # The normalized rule's results are finite for the inputs it accepts,
    # so the optimizer checks those (one reduction) instead of the results,
    # in one compiled step per variable.
    a = keras.Variable(np.ones((2, 3), "float32"))
    b = keras.Variable(np.full((4,), 300.0, "float16"))
    opt = keras_meta.LearnedOptimizer(weights="normalized")
    opt.build([a, b])
    # A finite gradient beyond GRADIENT_BOUND (g**2 would overflow v) is
    # refused like a NaN one; float16 parameters whose sum of squares
    # overflows float16 (4 * 300**2 > 65504) still step.
    opt.apply([tf.fill((2, 3), 1e16), tf.ones((4,), "float16")], [a, b])
    np.testing.assert_array_equal(a.numpy(), np.ones((2, 3)))
    assert [float(t.numpy()) for t in opt._slots["t"]] == [0.0, 1.0]
    assert int(opt.nonfinite_count.numpy()) == 1
    assert len(opt._fused_steps) == 1  # compiled once, shared by both
    # A NaN parameter is refused with a finite gradient, and nothing of
    # its state moves.
    a.assign(np.array([[1.0, np.nan, 1.0], [1.0, 1.0, 1.0]], "float32"))
    opt.apply([tf.ones((2, 3)), tf.ones((4,), "float16")], [a, b])
    assert int(opt.nonfinite_count.numpy()) == 2
    assert float(opt._slots["t"][0].numpy()) == 0.0
    assert float(opt._slots["t"][1].numpy()) == 2.0
    a.assign(np.ones((2, 3), "float32"))
    opt.apply([tf.fill((2, 3), 1e14), tf.ones((4,), "float16")], [a, b])
    assert np.all(a.numpy() < 1.0) and np.all(np.isfinite(a.numpy()))
    assert int(opt.nonfinite_count.numpy()) == 2


def test_nan_loss_model_keeps_finite_weights():
    x, y = _data(32)
    x[0, 0, 0, 0] = np.nan
    model = _compile(_model(), jit=False)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert all(np.all(np.isfinite(v.numpy())) for v in model.trainable_variables)
    assert int(model.optimizer.nonfinite_count.numpy()) > 0


def test_fit_under_xla_warns_of_its_skipped_updates_at_the_end():
    # A compiled step cannot print; the end of fit reports the skips made
    # since the last report, once.
    x, y = _data(32)
    x[0, 0, 0, 0] = np.nan
    model = _compile(_model(), jit=True)
    with pytest.warns(RuntimeWarning, match=r"skipped (\d+) variable "
                      r"updates since the last report") as record:
        model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    count = int(model.optimizer.nonfinite_count.numpy())
    assert count > 0 and f"{count} in all" in str(record[-1].message)
    clean, _ = _data(32, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model.fit(clean, y, batch_size=32, epochs=1, verbose=0)


def _write(path, content):
    with open(path, "wb") as f:
        f.write(content)
    return path


def _npz(path, arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("make,error,match", [
    (lambda d: os.path.join(d, "absent.npz"), FileNotFoundError, "not found"),
    (lambda d: _write(os.path.join(d, "junk.npz"), b"not a zip"), ValueError,
     "not a valid .npz"),
    (lambda d: _npz(os.path.join(d, "nocfg.npz"), {"a": np.ones(2)}),
     ValueError, "no '__config__'"),
    (lambda d: _npz(os.path.join(d, "badcfg.npz"),
                    {"__config__": np.array('{"hidden": 3}')}),
     ValueError, "malformed"),
    (lambda d: _npz(os.path.join(d, "shape.npz"), {
        **{k: np.zeros((1,) + tuple(v.shape)) if k == "out/bias" else v
           for k, v in lstm_rule.init_phi().items()},
        "__config__": np.array('{}')}), ValueError, r"'out/bias' has shape \(1, 2\), expected \(2,\)"),
    (lambda d: _npz(os.path.join(d, "missing.npz"), {
        **{k: v for k, v in lstm_rule.init_phi().items() if k != "log_lr"},
        "__config__": np.array('{}')}), ValueError, r"missing arrays \['log_lr'\]"),
])
def test_bad_weights_file_errors(tmp_path, make, error, match):
    path = make(str(tmp_path))
    with pytest.raises(error, match=match):
        keras_meta.LearnedOptimizer(weights=path)


def test_rule_read_over_a_file_changes_only_untrained_fields():
    opt = keras_meta.LearnedOptimizer(weights="normalized",
                                      rule={"dense_table_decay": False})
    _, file_config = weights_io.resolve("normalized")
    assert opt.rule_config == dataclasses.replace(file_config,
                                                  dense_table_decay=False)
    restored = keras_meta.LearnedOptimizer.from_config(opt.get_config())
    assert restored.rule_config == opt.rule_config
    # The whole file config, as given before, still agrees.
    full = rule_kinds.config_to_dict(file_config)
    assert keras_meta.LearnedOptimizer(
        weights="normalized", rule=full).rule_config == file_config
    with pytest.raises(ValueError, match="only the untrained fields"):
        keras_meta.LearnedOptimizer(weights="normalized",
                                    rule={"hidden_size": 4})
    with pytest.raises(ValueError, match="Unknown RuleConfig fields"):
        keras_meta.LearnedOptimizer(weights="per_tensor",
                                    rule={"dense_table_decay": False})


@pytest.mark.parametrize("kwargs,match", [
    ({"weights": 3}, "must be None"),
    ({"weights": {"a": np.ones(2)}}, "needs `rule`"),
    ({"weights": {"a": np.ones(2)}, "rule": {}}, "missing arrays"),
    ({"rule": {"hidden_size": 7}}, "was trained for rule"),
])
def test_bad_weights_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_meta.LearnedOptimizer(**kwargs)

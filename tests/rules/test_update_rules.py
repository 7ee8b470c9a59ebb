"""One contract suite over every update rule (`keras_meta.rules.UpdateRule`).

Each case of `CASES` builds a rule and its meta-parameters; every pure rule
goes through the same checks: `init`/`update` shapes and dtypes, a few
steps of the one inner loop (`rules.inner_loop.unroll`) lower a quadratic,
`update` assigns nothing, and a non-finite gradient never becomes a finite
step, so the shared non-finite policy (`keras_meta.nonfinite`) skips it.
`LearnedOptimizer`, the Keras adapter over the LSTM rule, is checked
against the pure rule path and against the same policy.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta
from keras_meta import nonfinite
from keras_meta.maml.inner_rules import InnerLSTM
from keras_meta.maml.inner_rules import InnerSGD
from keras_meta.rules import baselines
from keras_meta.rules import inner_loop
from keras_meta.rules import lstm
from keras_meta.rules import normalized

SHAPES = [(3, 2), (2,)]
TARGETS = [np.linspace(-1.0, 1.0, 6).reshape(3, 2), np.array([0.5, -0.8])]


def _values(dtype="float32"):
    rng = np.random.default_rng(0)
    return [tf.constant(rng.normal(size=s), dtype) for s in SHAPES]


def _quadratic(values, step=0):
    del step
    return tf.add_n([
        tf.reduce_sum(0.5 * (1.0 + i) * tf.square(v - tf.cast(t, v.dtype)))
        for i, (v, t) in enumerate(zip(values, TARGETS))])


def _inner(rule):
    owner = keras.layers.Layer()
    variables = [keras.Variable(v) for v in _values()]
    weights = rule.build(owner, variables, inner_steps=3, learning_rate=0.1)
    return rule, [tf.convert_to_tensor(w) for w in weights]


def _phi(config, seed=0):
    return {k: tf.constant(v) for k, v in
            lstm.init_phi(config, seed=seed).items()}


def _sign_descent_phi(config):
    """A hand-set phi of a `descent="none"` rule (1 unit): the LSTM's cell
    input follows sign(g) and the output is `-h`, a sign descent."""
    phi = {k: np.zeros(s, "float32")
           for k, s in lstm.phi_shapes(config).items()}
    phi["lstm0/kernel"][1, 2] = 3.0    # sign feature -> cell input gate g
    phi["lstm0/bias"][[0, 3]] = 4.0    # input and output gates open
    phi["out/kernel"][0, 0] = -1.0
    return {k: tf.constant(v) for k, v in phi.items()}


def _lstm(**fields):
    config = lstm.RuleConfig(hidden_size=3, num_layers=1, init_lr=0.1,
                             **fields)
    return lstm.LSTMRule(config), _phi(config)


def _lstm_none():
    config = lstm.RuleConfig(hidden_size=1, num_layers=1, descent="none")
    return lstm.LSTMRule(config), _sign_descent_phi(config)


def _learned():
    config = lstm.RuleConfig(hidden_size=3, num_layers=2, init_lr=0.1)
    phi = lstm.init_phi(config, seed=1)
    return baselines.Learned(phi, config), ()


def _normalized(**fields):
    config = normalized.NormalizedConfig(init_lr=0.1, **fields)
    params = normalized.init_meta_params(config, seed=1)
    params["out/kernel"] += 0.1  # the MLP matters
    return (normalized.NormalizedMLPRule(config, weight_decay=0.01),
            {k: tf.constant(v) for k, v in params.items()})


CASES = {
    "inner_sgd": lambda: _inner(InnerSGD()),
    "inner_meta_sgd": lambda: _inner(InnerSGD("per_parameter")),
    "inner_lslr": lambda: _inner(InnerSGD("per_step")),
    "inner_lstm": lambda: _inner(InnerLSTM(hidden_size=3)),
    "sgd": lambda: (baselines.make_baseline("sgd", 0.1), ()),
    "heavy_ball": lambda: (baselines.make_baseline("heavy_ball", 0.1), ()),
    "nag": lambda: (baselines.make_baseline("nag", 0.1), ()),
    "rmsprop": lambda: (baselines.make_baseline("rmsprop", 0.1), ()),
    "adam": lambda: (baselines.make_baseline("adam", 0.1), ()),
    "learned": _learned,
    "lstm_adam": lambda: _lstm(),
    "lstm_sgd": lambda: _lstm(descent="sgd"),
    "lstm_none": _lstm_none,
    "lstm_momentum": lambda: _lstm(descent="momentum"),
    "lstm_tensor": lambda: _lstm(granularity="tensor"),
    "lstm_tensor_horizon": lambda: _lstm(
        granularity="tensor", hyper_horizon=10.0, hyper_down_fraction=0.5,
        min_offset=-1.0, max_offset=1.0),
    "normalized_mlp": lambda: _normalized(),
    "normalized_mlp_hyper": lambda: _normalized(hyper_rate=0.1),
    "normalized_mlp_gradient_only": lambda: _normalized(
        parameter_feature=False, antisymmetric=True, normalize="none"),
    "normalized_mlp_factored": lambda: _normalized(
        factored_second_moment=True),
    "normalized_mlp_bfloat16": lambda: _normalized(bfloat16_momenta=True),
}


def _grads(values):
    with tf.GradientTape() as tape:
        tape.watch(values)
        loss = _quadratic(values)
    return tape.gradient(loss, values)


def _spec(state):
    return [(tuple(t.shape), t.dtype) for t in tf.nest.flatten(state)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_init_and_update_shapes_and_dtypes(name):
    rule, meta_params = CASES[name]()
    values = _values()
    state = rule.init(values)
    updates, new_state = rule.update(meta_params, _grads(values), state,
                                     values, 0)
    assert len(updates) == len(values)
    for update, value in zip(updates, values):
        assert update.shape == value.shape and update.dtype == value.dtype
    tf.nest.assert_same_structure(state, new_state)
    assert _spec(new_state) == _spec(state)


@pytest.mark.parametrize("name", sorted(CASES))
def test_storage_dtypes_name_state_keys(name):
    # What a Keras optimizer may store in another dtype: keys of each
    # tensor's state, floating dtypes; nothing for other parameter dtypes
    # than float32 here.
    rule, _ = CASES[name]()
    state = rule.init(_values())
    stored = rule.storage_dtypes("float32")
    keys = set(state[0]) if isinstance(state, (list, tuple)) and state \
        and isinstance(state[0], dict) else set()
    assert set(stored) <= keys
    assert all(tf.as_dtype(d).is_floating for d in stored.values())
    expected = {"m0", "m1"} if name == "normalized_mlp_bfloat16" else set()
    assert {k for k, d in stored.items() if d == tf.bfloat16} == expected
    assert not any(d == tf.bfloat16
                   for d in rule.storage_dtypes("float16").values())


def test_bfloat16_momenta_leave_the_pure_rule_unchanged():
    plain, meta_params = CASES["normalized_mlp"]()
    compact, _ = CASES["normalized_mlp_bfloat16"]()
    values = _values()
    results = [rule.update(meta_params, _grads(values), rule.init(values),
                           values, 0) for rule in (plain, compact)]
    for a, b in zip(*[tf.nest.flatten(r) for r in results]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("name", sorted(CASES))
def test_unroll_lowers_a_quadratic(name):
    rule, meta_params = CASES[name]()
    values = _values()
    final, state, losses = inner_loop.unroll(rule, meta_params, values,
                                             _quadratic, steps=5)
    assert len(losses) == 5
    assert float(_quadratic(final)) < 0.9 * float(losses[0]), name
    assert _spec(state) == _spec(rule.init(values))


@pytest.mark.parametrize("name", sorted(CASES))
def test_update_is_pure(name):
    rule, meta_params = CASES[name]()
    values = _values()
    state = rule.init(values)
    fn = tf.function(lambda m, g, s, v: rule.update(m, g, s, v, 1))
    graph = fn.get_concrete_function(meta_params, _grads(values), state,
                                     values).graph
    assigns = [op.type for op in graph.get_operations()
               if "Assign" in op.type]
    assert not assigns, assigns
    # The same call twice gives the same numbers: no hidden state.
    first = fn(meta_params, _grads(values), state, values)
    second = fn(meta_params, _grads(values), state, values)
    for a, b in zip(tf.nest.flatten(first), tf.nest.flatten(second)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("name", sorted(CASES))
def test_nonfinite_gradient_is_skipped_by_the_policy(name):
    rule, meta_params = CASES[name]()
    values = _values()
    state = rule.init(values)
    grads = list(_grads(values))
    grads[1] = tf.constant([np.nan, 1.0], grads[1].dtype)
    updates, new_state = rule.update(meta_params, grads, state, values, 0)
    # The rule never turns a non-finite gradient into a finite step...
    ok = nonfinite.all_finite([updates, new_state])
    assert not bool(ok)
    assert int(nonfinite.first_nonfinite([grads, updates])) == 1
    # ...so the policy keeps the old values and state, exactly.
    new_values = [v + u for v, u in zip(values, updates)]
    kept = nonfinite.keep_if_finite(ok, new_values, values)
    kept_state = nonfinite.keep_if_finite(ok, new_state, state)
    for a, b in zip(tf.nest.flatten([kept, kept_state]),
                    tf.nest.flatten([values, state])):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# ------------------------------------------ the Keras adapter (LearnedOptimizer)

ADAPTER_CONFIGS = {
    "adam": dict(),
    "none": dict(descent="none"),
    "momentum": dict(descent="momentum"),
    "tensor": dict(granularity="tensor"),
    "tensor_horizon": dict(granularity="tensor", hyper_horizon=10.0),
}


def _adapter(fields, out_scale=30.0):
    config = lstm.RuleConfig(hidden_size=3, num_layers=1, init_lr=0.1,
                             **fields)
    phi = lstm.init_phi(config, seed=2)
    phi["out/kernel"] = phi["out/kernel"] * out_scale  # the LSTM matters
    opt = keras_meta.LearnedOptimizer(weights=phi, rule=config.to_dict())
    return config, phi, opt


@pytest.mark.parametrize("name", sorted(ADAPTER_CONFIGS))
def test_keras_adapter_equals_the_pure_rule(name):
    config, phi, opt = _adapter(ADAPTER_CONFIGS[name])
    variables = [keras.Variable(v) for v in _values()]
    for _ in range(4):
        values = [tf.convert_to_tensor(v) for v in variables]
        opt.apply(_grads(values), variables)
    rule = lstm.LSTMRule(config)
    phi = {k: tf.constant(v) for k, v in phi.items()}
    values, state, _ = inner_loop.unroll(rule, phi, _values(), _quadratic, 4)
    for variable, value in zip(variables, values):
        np.testing.assert_array_equal(variable.numpy(), value.numpy())
    keys = lstm.state_keys(config)
    for index, tensor_state in enumerate(state):
        for key in keys:
            np.testing.assert_array_equal(
                opt._slots[key][index].numpy(), tensor_state[key].numpy())
            assert opt._slots[key][index].shape == tensor_state[key].shape


# "none" (the LSTM's output alone) descends only once meta-trained.
@pytest.mark.parametrize("name", sorted(set(ADAPTER_CONFIGS) - {"none"}))
def test_keras_adapter_lowers_a_quadratic_and_skips_nonfinite(name):
    _, _, opt = _adapter(ADAPTER_CONFIGS[name], out_scale=1.0)
    variables = [keras.Variable(v) for v in _values()]
    before = float(_quadratic(_values()))
    for _ in range(5):
        opt.apply(_grads([tf.convert_to_tensor(v) for v in variables]),
                  variables)
    after = float(_quadratic([tf.convert_to_tensor(v) for v in variables]))
    assert after < 0.9 * before
    old = [v.numpy() for v in variables]
    grads = _grads([tf.convert_to_tensor(v) for v in variables])
    opt.apply([grads[0], tf.constant([np.nan, 1.0])], variables)
    assert int(opt.nonfinite_count.numpy()) == 1
    np.testing.assert_array_equal(variables[1].numpy(), old[1])
    assert not np.array_equal(variables[0].numpy(), old[0])

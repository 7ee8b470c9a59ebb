"""`LearnedOptimizer` as a Keras optimizer, with the normalized MLP rule:
every Keras feature it supports (EMA, clipping, gradient accumulation, loss
scaling and mixed precision, sparse `Embedding` gradients, tf.distribute,
`.keras` files, XLA), automatic names, tuple `IndexedSlices`, and weight
decay in AdamW's meaning."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta
from keras_meta.optimizers import variable_step
from keras_meta.optimizers import weights_io
from keras_meta.rules import normalized

INIT = weights_io.INIT_NORMALIZED


def _trained_like():
    """Normalized-rule meta-parameters whose MLP and schedule matter."""
    params = normalized.init_meta_params(normalized.NormalizedConfig())
    rng = np.random.default_rng(1)
    for key in ("out/kernel", "schedule/kernel"):
        params[key] = rng.normal(0.0, 0.5, params[key].shape).astype("float32")
    return params


def _optimizer(**kwargs):
    rule = dict(normalized.NormalizedConfig().to_dict(),
                rule_type=normalized.RULE_TYPE)
    return keras_meta.LearnedOptimizer(weights=_trained_like(), rule=rule,
                                       **kwargs)


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, (x[:, :2].sum(1) > 0).astype("int32")


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(5, activation="relu"),
        keras.layers.Dense(2)])


def _fit(model, optimizer, epochs=2, jit=False, x=None, y=None):
    model.compile(optimizer=optimizer, jit_compile=jit,
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    if x is None:
        x, y = _data()
    history = model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False,
                        verbose=0)
    return history.history["loss"]


def _weights(model):
    return [v.numpy() for v in model.trainable_variables]


def _variables(seed=0):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.normal(size=s).astype("float32"))
            for s in [(3, 4), (4,)]]


def _grads(seed=1):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=s), "float32")
            for s in [(3, 4), (4,)]]


def _apply(optimizer, grad_seq, seed=0):
    variables = _variables(seed)
    for grads in grad_seq:
        optimizer.apply(grads, variables)
    return [v.numpy() for v in variables]


def test_automatic_names_are_unique_like_keras_optimizers():
    names = [keras_meta.LearnedOptimizer(weights=INIT).name
             for _ in range(3)]
    adam = [keras.optimizers.Adam().name for _ in range(2)]
    # Keras numbers the instances of a class: adam, adam_1, ...
    assert adam[1] == "adam_" + str(int(("adam_0" if adam[0] == "adam"
                                         else adam[0]).split("_")[1]) + 1)
    assert len(set(names)) == 3
    for first, second in zip(names, names[1:]):
        index = 0 if first == "learned_optimizer" else int(
            first.rsplit("_", 1)[1])
        assert second == f"learned_optimizer_{index + 1}"
    assert keras_meta.LearnedOptimizer(weights=INIT, name="mine").name == "mine"


@pytest.mark.parametrize("weights", [INIT, "per_tensor"])
def test_tuple_indexed_slices_are_accepted_like_tf_ones(weights):
    results = []
    for indices, shape in [((0, 2), (5, 3)),
                           (tf.constant([0, 2]), tf.constant([5, 3]))]:
        variable = keras.Variable(np.ones((5, 3), "float32"))
        grad = tf.IndexedSlices(tf.ones((2, 3)), indices, shape)
        keras_meta.LearnedOptimizer(weights=weights).apply([grad], [variable])
        results.append(variable.numpy())
    np.testing.assert_array_equal(results[0], results[1])
    assert not np.array_equal(results[0][0], np.ones(3))


def test_weight_decay_is_adamw_and_scales_with_the_actual_step():
    # From the same state and values, the step with decay differs from the
    # step without by -learning_rate * lr_t * wd * p, lr_t the rule's step
    # size for that tensor and step (after a first step, so lr_t follows
    # the learned schedule).
    first, second = _grads(1), _grads(2)
    plain, decayed = _variables(), _variables()
    a = _optimizer(learning_rate=0.7)
    b = _optimizer(weight_decay=0.5, learning_rate=0.7)
    a.apply(first, plain)
    b.apply(first, decayed)
    for v, w in zip(decayed, plain):
        w.assign(v)  # the same values again; the states already agree
    rates = a.step_sizes()
    values = [v.numpy() for v in plain]
    a.apply(second, plain)
    b.apply(second, decayed)
    for v, w, p, path in zip(plain, decayed, values, rates):
        assert rates[path] != pytest.approx(0.7 * 1e-3)
        np.testing.assert_allclose(w.numpy() - v.numpy(),
                                   -rates[path] * 0.5 * p, rtol=1e-4,
                                   atol=3e-7)  # float32 rounding of p


def test_weight_decay_exclusion_and_the_lstm_rules_keras_decay():
    grads = _grads()
    excluded = _optimizer(weight_decay=0.5)
    excluded.exclude_from_weight_decay(var_names=["bias_like"])
    variables = [keras.Variable(np.ones((3, 4), "float32")),
                 keras.Variable(np.ones((4,), "float32"), name="bias_like")]
    reference = [keras.Variable(np.ones((3, 4), "float32")),
                 keras.Variable(np.ones((4,), "float32"))]
    excluded.apply(grads, variables)
    _optimizer().apply(grads, reference)
    np.testing.assert_array_equal(variables[1].numpy(), reference[1].numpy())
    assert not np.allclose(variables[0].numpy(), reference[0].numpy())
    # The LSTM rules keep Keras's generic decay: p -= learning_rate * wd * p
    # before the step, unchanged.
    lstm_vars = [keras.Variable(np.ones((4,), "float32")) for _ in range(2)]
    keras_meta.LearnedOptimizer(weights="per_tensor", weight_decay=0.5).apply(
        [tf.zeros((4,))], lstm_vars[:1])
    np.testing.assert_allclose(lstm_vars[0].numpy(), 0.5)


# ------------------------------------ Keras features, with the normalized rule

def test_ema_replaces_the_weights_at_the_end_of_fit():
    plain, averaged = _model(), _model()
    _fit(plain, _optimizer())
    losses = _fit(averaged, _optimizer(use_ema=True, ema_momentum=0.5))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    # fit ends by overwriting the weights with their moving averages.
    for a, w in zip(averaged.optimizer._model_variables_moving_average,
                    _weights(averaged)):
        np.testing.assert_array_equal(a.numpy(), w)
    assert not all(np.allclose(a, b) for a, b in zip(_weights(plain),
                                                     _weights(averaged)))


def test_clipping():
    grads = [_grads(1), _grads(2)]
    # Clipping by norm rescales a step's gradient: the rule is scale-free,
    # so a single step stays the same (up to eps).
    for clip in ({"clipnorm": 1e-3}, {"global_clipnorm": 1e-3}):
        start = _variables()[0].numpy()
        np.testing.assert_allclose(
            _apply(_optimizer(**clip), grads[:1])[0] - start,
            _apply(_optimizer(), grads[:1])[0] - start, rtol=1e-3)
    # Clipping by value changes the direction: as if the gradients were
    # clipped before the rule.
    clipped = [[tf.clip_by_value(g, -0.3, 0.3) for g in step]
               for step in grads]
    got = _apply(_optimizer(clipvalue=0.3), grads)
    for a, b in zip(got, _apply(_optimizer(), clipped)):
        np.testing.assert_array_equal(a, b)


def test_gradient_accumulation_steps_on_the_mean_gradient():
    g1, g2 = _grads(1), _grads(2)
    accumulating = _optimizer(gradient_accumulation_steps=2)
    got = _apply(accumulating, [g1, g2])
    expected = _apply(_optimizer(), [[(a + b) / 2 for a, b in zip(g1, g2)]])
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert float(accumulating._slots["t"][0].numpy()) == 1.0


def test_loss_scale_factor_and_mixed_precision():
    grads = [_grads(1)]
    scaled = [[g * 1024.0 for g in grads[0]]]
    for a, b in zip(_apply(_optimizer(loss_scale_factor=1024.0), scaled),
                    _apply(_optimizer(), grads)):
        np.testing.assert_array_equal(a, b)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _model()
        losses = _fit(model, _optimizer())
    finally:
        keras.config.set_dtype_policy(previous)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.optimizer.inner_optimizer,
                      keras_meta.LearnedOptimizer)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert all(v.dtype == "float32" for v in model.trainable_variables)


def test_sparse_embedding_gradients():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 50, size=(32, 5))
    y = (x[:, 0] % 2).astype("int32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,), dtype="int32"),
                              keras.layers.Embedding(50, 4),
                              keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(2)])
    before = model.layers[0].embeddings.numpy()
    losses = _fit(model, _optimizer(), epochs=3, x=x, y=y)
    after = model.layers[0].embeddings.numpy()
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert not np.allclose(before, after)
    assert int(model.optimizer.nonfinite_count.numpy()) == 0


def test_distribute_strategy_matches_plain_fit():
    reference = _model(seed=2)
    _fit(reference, _optimizer())
    strategy = tf.distribute.MirroredStrategy(["CPU:0"])
    with strategy.scope():
        model = _model(seed=2)
        optimizer = _optimizer()
    _fit(model, optimizer)
    for a, b in zip(_weights(reference), _weights(model)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("split", [False, True])
def test_xla_and_graph_agree(monkeypatch, split):
    # With `split`, every variable takes the two-computation step
    # (variable_step.compiled_step), inlined into the XLA train step.
    if split:
        monkeypatch.setattr(variable_step, "SPLIT_MIN_SIZE", 1)
    results = []
    for jit in (False, True):
        model = _model(seed=3)
        _fit(model, _optimizer(use_ema=True), jit=jit)
        results.append(_weights(model) + [
            v.numpy() for v in model.optimizer.variables])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_keras_save_load_continues_identically(tmp_path):
    model = _model(seed=4)
    _fit(model, keras_meta.LearnedOptimizer(weights=INIT, weight_decay=0.01),
         epochs=1)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer.rule_config,
                      normalized.NormalizedConfig)
    assert loaded.optimizer.weight_decay == pytest.approx(0.01)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x, y = _data()
    for m in (model, loaded):
        m.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(_weights(model), _weights(loaded)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

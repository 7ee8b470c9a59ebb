"""`NormalizedConfig(factored_second_moment=True)`: the normalized rule
with Adafactor's factored second moment, as a pure function and as the
Keras optimizer (state shapes, memory, save and load)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta
from keras_meta.rules import normalized
from tests.optimizers.test_normalized_rule import _steps
from tests.optimizers.test_normalized_rule import _tensors
from tests.optimizers.test_normalized_rule import _trained_like

FACTORED = normalized.NormalizedConfig(factored_second_moment=True)
SHAPES = [(3, 2, 4), (4,)]  # a kernel (a [6, 4] matrix view) and a bias


def _run(config, params, grads_seq, values):
    """The rule of `config` stepped over `grads_seq`: `(updates, state)`."""
    return _steps(normalized.NormalizedMLPRule(config), params, grads_seq,
                  values)


def _adafactor_adam(grads_seq, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam's update with Adafactor's second moment for the kernel
    (`row[i] col[j] / mean(row)` over its [6, 4] view) and Adam's own for
    the bias, in NumPy float64."""
    m = [np.zeros(s) for s in SHAPES]
    row, col, v_bias = np.zeros(6), np.zeros(4), np.zeros(4)
    out = []
    for t, (g_kernel, g_bias) in enumerate(grads_seq, start=1):
        g_kernel = np.asarray(g_kernel, np.float64)
        g_bias = np.asarray(g_bias, np.float64)
        square = (g_kernel ** 2).reshape(6, 4)
        row = b2 * row + (1 - b2) * square.mean(1)
        col = b2 * col + (1 - b2) * square.mean(0)
        v_bias = b2 * v_bias + (1 - b2) * g_bias ** 2
        v_kernel = (np.outer(row, col) / row.mean()).reshape(SHAPES[0])
        step = []
        for i, (g, v) in enumerate(((g_kernel, v_kernel),
                                    (g_bias, v_bias))):
            m[i] = b1 * m[i] + (1 - b1) * g
            d = (m[i] / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
            step.append(-lr * d)
        out.append(step)
    return out, row, col


def test_untrained_factored_rule_is_adam_with_adafactors_second_moment():
    config = normalized.NormalizedConfig(normalize="none",
                                         factored_second_moment=True)
    rng = np.random.default_rng(0)
    grads_seq = [[(rng.normal(size=s) * 10.0 ** rng.integers(-2, 2, s))
                  .astype("float32") for s in SHAPES] for _ in range(5)]
    values = [tf.constant(rng.normal(size=s), "float32") for s in SHAPES]
    got, state = _run(config, _tensors(normalized.init_meta_params(config)),
                      grads_seq, values)
    expected, row, col = _adafactor_adam(grads_seq, config.init_lr)
    for got_step, exp_step in zip(got, expected):
        for a, b in zip(got_step, exp_step):
            np.testing.assert_allclose(a, b, rtol=2e-5)
    # The kernel's v holds its 6 row and 4 column averages; the bias's
    # v and every momentum are whole.
    assert state[0]["v"].shape == (10,) and state[1]["v"].shape == (4,)
    assert state[0]["m2"].shape == SHAPES[0]
    np.testing.assert_allclose(state[0]["v"].numpy(),
                               np.concatenate([row, col]), rtol=1e-5)
    assert normalized.state_shapes(SHAPES[0], FACTORED)["v"] == (10,)
    assert normalized.state_shapes((5,), FACTORED)["v"] == (5,)


def test_factored_equals_whole_where_squared_gradients_are_rank_one():
    # Adafactor's estimate is exact when g**2 is an outer product with a
    # fixed row factor; then the trained-like rule (MLP, schedule, decay
    # feature) steps as with the whole v. Otherwise it differs.
    params = _trained_like(config=FACTORED)
    rng = np.random.default_rng(2)
    a = rng.uniform(0.1, 3.0, size=(3, 2, 1))

    def grads(rank_one):
        out = []
        for _ in range(4):
            b = rng.uniform(0.1, 3.0, size=(1, 1, 4))
            g = a * b if rank_one else rng.uniform(0.1, 3.0, SHAPES[0])
            signs = rng.choice([-1.0, 1.0], size=SHAPES[0])
            out.append([(g * signs).astype("float32"),
                        rng.normal(size=4).astype("float32")])
        return out
    values = [tf.constant(rng.normal(size=s), "float32") for s in SHAPES]
    whole_config = normalized.NormalizedConfig()
    for rank_one in (True, False):
        grads_seq = grads(rank_one)
        factored, _ = _run(FACTORED, params, grads_seq, values)
        whole, _ = _run(whole_config, params, grads_seq, values)
        for f_step, w_step in zip(factored, whole):
            np.testing.assert_allclose(f_step[1], w_step[1], rtol=1e-5)
            assert np.allclose(f_step[0], w_step[0], rtol=1e-4) == rank_one


def test_factored_update_is_invariant_to_the_loss_scale():
    params = _trained_like(config=FACTORED)
    rng = np.random.default_rng(3)
    grads_seq = [[rng.normal(size=s).astype("float32") for s in SHAPES]
                 for _ in range(3)]
    values = [tf.constant(rng.normal(size=s), "float32") for s in SHAPES]
    base, _ = _run(FACTORED, params, grads_seq, values)
    scaled, _ = _run(FACTORED, params,
                     [[g * 1000.0 for g in gs] for gs in grads_seq], values)
    for a_step, b_step in zip(base, scaled):
        for a, b in zip(a_step, b_step):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9)


def _text_model(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6,), dtype="int32"),
        keras.layers.Embedding(50, 8),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(3)])


def _fit(model, epochs=1):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 50, size=(96, 6)).astype("int32")
    y = (x[:, 0] % 3).astype("int32")
    return model.fit(x, y, batch_size=32, epochs=epochs, shuffle=False,
                     verbose=0).history["loss"]


def _trained(kwargs):
    """The text model trained 3 epochs with `LearnedOptimizer(**kwargs)`:
    `(model, losses, optimizer state size in floats)`."""
    model = _text_model(seed=4)
    model.compile(keras_meta.LearnedOptimizer(**kwargs),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    losses = _fit(model, epochs=3)
    size = sum(int(np.prod(v.shape)) for v in model.optimizer.variables)
    return model, losses, size


@pytest.fixture(scope="module")
def whole():
    """The default rule's run, the reference of both `lazy_tables` cases
    (it does not depend on them): trained once per module."""
    return _trained({})


@pytest.mark.parametrize("lazy_tables", [False, True])
def test_keras_factored_rule_memory_training_and_save_load(tmp_path, whole,
                                                           lazy_tables):
    rule = {"dense_table_decay": False, "factored_second_moment": True,
            "lazy_tables": lazy_tables}
    sizes = {}
    factored = _trained({"rule": rule})
    for name, (model, losses, size) in (("whole", whole),
                                        ("factored", factored)):
        assert losses[-1] < losses[0], losses
        opt = model.optimizer
        assert opt.use_ema and opt.rule_config.factored_second_moment == (
            name == "factored")
        sizes[name] = size
    # One float per parameter less, plus a row and a column average per
    # matrix (the Embedding's [50, 8] and the two Dense kernels).
    matrices = [(50, 8), (8, 16), (16, 3)]
    assert sizes["whole"] - sizes["factored"] == sum(
        r * c - r - c for r, c in matrices)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.rule_config == model.optimizer.rule_config
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for m in (model, loaded):
        _fit(m)
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6,
                                   atol=1e-7)


def test_factored_second_moment_must_be_a_bool_and_sets_over_a_file():
    with pytest.raises(ValueError,
                       match="factored_second_moment must be a bool"):
        normalized.NormalizedConfig(factored_second_moment=1)
    opt = keras_meta.LearnedOptimizer(
        weights="normalized", rule={"factored_second_moment": True})
    assert opt.rule_config.factored_second_moment

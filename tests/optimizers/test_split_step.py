"""The split step of a large variable (`variable_step.compiled_step` with
`split=True`): the update and the state written by two XLA computations,
Keras's weight average in the second (a compact one in the first). It must
give the one-computation step's results, with Keras's averaging
semantics."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta
from keras_meta.optimizers import variable_step

NO_SPLIT = 1 << 62


def _gradients(steps=4, seed=0):
    """Dense gradients for a (5, 4) kernel and a (4,) bias; the third
    step's kernel gradient has a NaN (that variable's step is skipped)."""
    rng = np.random.default_rng(seed)
    grads = [[rng.normal(size=(5, 4)).astype("float32"),
              rng.normal(size=(4,)).astype("float32")] for _ in range(steps)]
    grads[2][0][1, 1] = np.nan
    return grads


def _run(monkeypatch, min_size, grads, **kwargs):
    """Applies `grads` to fresh variables with `SPLIT_MIN_SIZE = min_size`
    in a compiled train function; returns the variables, the optimizer's
    variables by path and the optimizer."""
    monkeypatch.setattr(variable_step, "SPLIT_MIN_SIZE", min_size)
    rng = np.random.default_rng(1)
    shapes = {"kernel": (5, 4), "bias": (4,)}
    variables = [keras.Variable(rng.normal(size=shape).astype("float32"),
                                name=name) for name, shape in shapes.items()]
    opt = keras_meta.LearnedOptimizer(**kwargs)
    opt.build(variables)
    apply = tf.function(lambda gs: opt.apply(gs, variables))
    for step_grads in grads:
        apply([tf.constant(g) for g in step_grads])
    return [v.numpy() for v in variables], _by_path(opt), opt


def _by_path(opt):
    """The optimizer's variables by path without the optimizer's name."""
    return {v.path.split("/", 1)[1]: v.numpy() for v in opt.variables}


@pytest.mark.parametrize("kwargs", [{}, {"gradient_accumulation_steps": 2},
                                    {"rule": {"factored_second_moment":
                                              True}},
                                    {"rule": {"bfloat16_momenta": True}},
                                    {"compact_ema": False},
                                    {"compact_ema": False,
                                     "gradient_accumulation_steps": 2}])
def test_split_step_equals_the_one_computation_step(monkeypatch, kwargs):
    grads = _gradients()
    values, state, opt = _run(monkeypatch, 1, grads, **kwargs)
    ref_values, ref_state, ref = _run(monkeypatch, NO_SPLIT, grads, **kwargs)
    assert all(split for _, split in opt._fused_steps)
    assert not any(split for _, split in ref._fused_steps)
    assert int(opt.nonfinite_count.numpy()) == 1
    for got, want in zip(values, ref_values):
        np.testing.assert_array_equal(got, want)
    averaged = [p for p in state
                if p.endswith(("_average", "_average_offset"))]
    assert len(averaged) == 2
    for path, want in ref_state.items():
        if path in averaged or "factored_second_moment" in kwargs.get(
                "rule", {}):
            # The split step's average is computed under XLA, which may
            # contract a multiply-add into one rounding; the factored
            # moment's averages are reduced in another order.
            np.testing.assert_allclose(state[path], want, rtol=1e-6,
                                       atol=1e-7, err_msg=path)
        else:
            np.testing.assert_array_equal(state[path], want, err_msg=path)


def test_average_has_keras_semantics_in_the_split_step(monkeypatch):
    # Keras: the average is the weights after the first step, then
    # m * average + (1 - m) * weights after each step; a variable that
    # got no gradient this step is averaged too.
    grads = _gradients(steps=3)
    grads[2][0][1, 1] = 0.5
    history = []
    monkeypatch.setattr(variable_step, "SPLIT_MIN_SIZE", 1)
    kernel = keras.Variable(np.ones((5, 4), "float32"), name="kernel")
    bias = keras.Variable(np.ones((4,), "float32"), name="bias")
    opt = keras_meta.LearnedOptimizer(ema_momentum=0.9, compact_ema=False)
    opt.build([kernel, bias])
    for step, (gk, gb) in enumerate(grads):
        if step == 1:  # the bias gets no gradient in this step
            opt.apply([tf.constant(gk)], [kernel])
        else:
            opt.apply([tf.constant(gk), tf.constant(gb)], [kernel, bias])
        history.append((kernel.numpy(), bias.numpy()))
    want = list(history[0])
    for weights in history[1:]:
        want = [0.9 * a + 0.1 * w for a, w in zip(want, weights)]
    averages = opt._model_variables_moving_average
    np.testing.assert_allclose(averages[0].numpy(), want[0], rtol=1e-6)
    np.testing.assert_allclose(averages[1].numpy(), want[1], rtol=1e-6)
    assert not np.allclose(want[0], history[-1][0])


@pytest.mark.parametrize("rule", [{}, {"lazy_tables": True}])
def test_split_step_of_a_sparse_table(monkeypatch, rule):
    # A table's sparse rows: the learned decay gated, or (lazy_tables) the
    # untouched rows' values and state kept, in both computations.
    rng = np.random.default_rng(2)
    rows = [tf.IndexedSlices(tf.constant(rng.normal(size=(3, 4)),
                                         "float32"),
                             tf.constant(idx), tf.constant([5, 4]))
            for idx in ([0, 2, 2], [1, 2, 4], [0, 1, 3])]
    results = []
    for min_size in (1, NO_SPLIT):
        monkeypatch.setattr(variable_step, "SPLIT_MIN_SIZE", min_size)
        table = keras.Variable(np.ones((5, 4), "float32"), name="table")
        opt = keras_meta.LearnedOptimizer(rule=rule or None)
        opt.build([table])
        for grad in rows:
            opt.apply([grad], [table])
        results.append((table.numpy(), _by_path(opt)))
    (got, got_state), (want, want_state) = results
    np.testing.assert_array_equal(got, want)
    if rule:
        # Row 4 is touched once, at the second step: lazily, its momenta
        # are those of one step.
        assert np.all(got[4] != 1.0)
    for path, value in want_state.items():
        np.testing.assert_allclose(got_state[path], value, rtol=1e-6,
                                   atol=1e-7, err_msg=path)

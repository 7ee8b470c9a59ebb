"""adapt_and_predict and adapt_and_predict_batch: the numbers of adapt(),
for every variant and inner rule; one trace per shape; padded tasks adapt
as alone; adapt()'s clones share one predict function."""

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_meta
from tests.maml.test_variants_contract import CASES
from tests.maml.test_variants_contract import make


def task(seed, shots, queries=6):
    rng = np.random.default_rng(seed)
    amp, phase = rng.uniform(0.5, 3), rng.uniform(0, 3)
    x = rng.uniform(-5, 5, (shots + queries, 1)).astype("float32")
    y = (amp * np.sin(x - phase)).astype("float32")
    return x[:shots], y[:shots], x[shots:]


@pytest.mark.parametrize("case", sorted(CASES))
def test_adapt_and_predict_equals_adapt_then_predict(case):
    maml = make(case)
    sx, sy, qx = task(0, 4)
    expected = maml.adapt(sx, sy).predict(qx, verbose=0)
    got = maml.adapt_and_predict(sx, sy, qx)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_more_steps_than_training_ran():
    """Learned per-step rates reuse the last one past the trained steps."""
    maml = make("maml_plus_plus")
    sx, sy, qx = task(0, 4)
    np.testing.assert_allclose(
        maml.adapt_and_predict(sx, sy, qx, steps=3).numpy(),
        maml.adapt(sx, sy, steps=3)(qx).numpy(), rtol=1e-5, atol=1e-6)


def test_one_trace_per_shape_and_meta_weights_read_each_call():
    maml = make("maml")
    fn = maml.adapt_and_predict_function()
    for seed in range(6):
        maml.adapt_and_predict(*task(seed, 4))
    assert fn.experimental_get_tracing_count() == 1
    before = maml.adapt_and_predict(*task(0, 4)).numpy()
    maml.model.layers[-1].bias.assign([1.0])
    after = maml.adapt_and_predict(*task(0, 4)).numpy()
    assert not np.allclose(before, after)
    assert fn.experimental_get_tracing_count() == 1


def test_adapted_models_share_one_predict_trace():
    maml = make("maml")
    sx, sy, qx = task(0, 4)
    for seed in range(3):
        adapted = maml.adapt(*task(seed, 4)[:2])
        np.testing.assert_allclose(adapted.predict(qx, verbose=0),
                                   adapted(qx).numpy(), rtol=1e-5,
                                   atol=1e-6)
    shared = maml._compiled(("adapted_predict",), None)
    assert shared.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("case,jit,parallelism", [
    ("maml", True, "auto"),  # one batched Dense program under XLA
    ("meta_sgd", False, "sequential"),  # a map over tasks
    ("rule_lstm", False, "auto"),  # vectorized_map
])
def test_batched_tasks_of_different_sizes_adapt_as_alone(case, jit,
                                                         parallelism):
    maml = make(case, task_parallelism=parallelism)
    maml.compile(optimizer="adam", loss="mse", jit_compile=jit)
    tasks = [task(seed, shots, queries=queries) for seed, (shots, queries)
             in enumerate([(2, 3), (5, 4)])]
    preds = maml.adapt_and_predict_batch(*map(list, zip(*tasks)))
    assert [p.shape[0] for p in preds] == [3, 4]
    for pred, (sx, sy, qx) in zip(preds, tasks):
        np.testing.assert_allclose(
            pred, maml.adapt_and_predict(sx, sy, qx).numpy(),
            rtol=1e-5, atol=1e-6)
    if case == "maml":  # equal sizes with a task axis: a tensor back
        stacked = maml.adapt_and_predict_batch(
            *[np.stack([part, part]) for part in tasks[1]])
        assert stacked.shape == (2, 4, 1)
        np.testing.assert_allclose(stacked[1], preds[1],
                                   rtol=1e-5, atol=1e-6)


def test_batch_norm_tasks_are_grouped_by_size_not_padded():
    keras.utils.set_random_seed(0)
    net = keras.Sequential([
        keras.Input((1,)), keras.layers.Dense(4),
        keras.layers.BatchNormalization(), keras.layers.Dense(1)])
    maml = keras_meta.MAML(net, inner_learning_rate=0.1, inner_steps=2)
    maml.compile(optimizer="adam", loss="mse")
    tasks = [task(seed, shots) for seed, shots in enumerate([2, 5, 2])]
    preds = maml.adapt_and_predict_batch(*map(list, zip(*tasks)))
    for pred, (sx, sy, qx) in zip(preds, tasks):
        np.testing.assert_allclose(
            pred, maml.adapt_and_predict(sx, sy, qx).numpy(),
            rtol=1e-5, atol=1e-6)


def test_masked_support_loss_has_the_unpadded_gradient():
    """Padded rows weigh 0: the loss and its gradient are the unpadded
    mean's (checked on the support loss itself)."""
    from keras_meta.maml import tasks as task_lib
    maml = make("maml")
    sx, sy, _ = task(0, 3)
    padded_x = np.concatenate([sx, sx[-1:], sx[-1:]])
    padded_y = np.concatenate([sy, sy[-1:], sy[-1:]])
    mask = tf.constant([1.0, 1, 1, 0, 0])
    params = [tf.convert_to_tensor(v) for v in maml.model.trainable_variables]

    def loss_and_grads(x, y, weights):
        with tf.GradientTape() as tape:
            tape.watch(params)
            pred = maml.model.stateless_call(params, [], x)[0]
            loss = task_lib.task_loss(maml, y, pred, [], weights)
        return [loss, *tape.gradient(loss, params)]

    for a, b in zip(loss_and_grads(sx, sy, None),
                    loss_and_grads(padded_x, padded_y, mask)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6,
                                   atol=1e-7)


def test_bad_inputs_say_what_was_expected():
    maml = make("maml")
    sx, sy, qx = task(0, 4)
    with pytest.raises(ValueError, match="query_x must hold examples"):
        maml.adapt_and_predict(sx, sy, np.zeros((3, 2), "float32"))
    with pytest.raises(ValueError, match="non-finite"):
        maml.adapt_and_predict(sx, sy, np.full((3, 1), np.nan, "float32"))
    with pytest.raises(ValueError, match="without a task axis"):
        maml.adapt_and_predict(sx[None], sy[None], qx)
    with pytest.raises(ValueError, match="same number of tasks"):
        maml.adapt_and_predict_batch([sx, sx], [sy], [qx, qx])
    with pytest.raises(ValueError, match="task 1 has support_x of shape"):
        maml.adapt_and_predict_batch([sx, sx], [sy, sy[:3]], [qx, qx])

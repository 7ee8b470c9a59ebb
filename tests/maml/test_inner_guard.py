"""MAML's `inner_guard`: a task whose inner step raises its support loss
too far is stopped at its last accepted weights, the other tasks go on;
through every task path, adapt, serving and training; gradients through
the guarded loop are those of the accepted steps (never NaN); config."""

import math

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_meta
from keras_meta.rules import baselines
from keras_meta.rules import inner_loop


def linear_net():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])


def episode():
    """Two tasks: inputs in [-1, 1] (SGD at rate 0.1 converges) and in
    [-30, 30] (~900x the curvature: the first step blows up)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 12, 1)).astype("float32")
    x[1] *= 30
    y = (2 * np.sin(x) + 1).astype("float32")
    return {"support_x": x[:, :6], "support_y": y[:, :6],
            "query_x": x[:, 6:], "query_y": y[:, 6:]}


def make(guard, parallelism="vectorized", jit=False, cls=keras_meta.MAML):
    maml = cls(linear_net(), inner_learning_rate=0.1, inner_steps=3,
               inner_guard=guard, task_parallelism=parallelism)
    maml.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse",
                 jit_compile=jit)
    return maml


@pytest.mark.parametrize("parallelism,jit", [
    ("vectorized", False), ("sequential", False), ("batched", True)])
def test_diverging_task_stops_the_others_go_on(parallelism, jit):
    data = episode()
    free = make(None, parallelism, jit).task_losses(data).numpy()
    guarded = make(2.0, parallelism, jit)
    losses = guarded.task_losses(data).numpy()
    assert free[1, -1] > 1e6 * free[1, 0]  # unguarded, task 1 blows up
    # Task 1's first step is undone: its weights stay the meta-weights.
    np.testing.assert_array_equal(losses[1], np.full(4, losses[1, 0]))
    np.testing.assert_allclose(losses[0], free[0], rtol=1e-6)
    assert np.all(np.diff(losses[0]) < 0)
    norms = guarded.inner_update_norms(data).numpy()
    assert np.all(norms[0] > 0) and np.all(norms[1] == 0)


def test_adapt_and_serving_keep_the_last_accepted_weights():
    data = episode()
    maml, free = make(2.0), make(None)
    adapted = maml.adapt(data["support_x"][1], data["support_y"][1])
    for a, m in zip(adapted.trainable_variables,
                    maml.model.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), m.numpy())
    meta_pred = maml.model(data["query_x"][1]).numpy()
    single = maml.adapt_and_predict(data["support_x"][1],
                                    data["support_y"][1], data["query_x"][1])
    np.testing.assert_allclose(single.numpy(), meta_pred, rtol=1e-6)
    batch = maml.adapt_and_predict_batch(
        list(data["support_x"]), list(data["support_y"]),
        list(data["query_x"]))
    np.testing.assert_allclose(batch[1], meta_pred, rtol=1e-6)
    np.testing.assert_allclose(batch[0], free.adapt_and_predict(
        data["support_x"][0], data["support_y"][0],
        data["query_x"][0]).numpy(), rtol=1e-5, atol=1e-6)


def test_training_meta_loss_is_the_guarded_query_loss():
    data = episode()
    for guard in (None, 2.0):
        maml = make(guard, cls=keras_meta.MetaSGD)
        expected = maml.task_losses(data).numpy()[:, -1].mean()
        before = [v.numpy() for v in maml.trainable_variables]
        logs = maml.fit(tf.data.Dataset.from_tensors(data),
                        steps_per_epoch=1, verbose=0).history
        np.testing.assert_allclose(logs["loss"][0], expected, rtol=1e-5)
        if guard is None:
            assert expected > 1e6
            continue
        assert logs["skipped_steps"] == [0] and expected < 10
        after = [v.numpy() for v in maml.trainable_variables]
        assert all(np.all(np.isfinite(v)) for v in after)
        assert all(not np.array_equal(b, a) for b, a in zip(before, after))


class StepRates(keras_meta.rules.UpdateRule):
    """SGD with a rate per step: `meta_params[step]`."""

    def update(self, meta_params, grads, state, values, step):
        return [-meta_params[step] * g for g in grads], state


def exp_loss(values, step):
    del step
    return tf.reduce_sum(tf.exp(tf.square(values[0])))


def outer(w0, rates, steps, guard):
    values, _, _ = inner_loop.unroll(StepRates(), rates, [w0], exp_loss,
                                     steps, guard=guard)
    return tf.reduce_sum(tf.sin(3 * values[0]))


def test_gradients_through_a_rejected_step_are_the_accepted_steps():
    """Step 2's huge rate makes the loss inf: the guard undoes it and the
    task stops, so 3 guarded steps are exactly 1 step, second derivatives
    included, with a zero (not NaN) gradient for the rejected rates."""
    w0 = tf.constant([0.5], tf.float64)
    rates = tf.constant([0.1, 50.0, 0.1], tf.float64)

    def grads(steps, guard):
        with tf.GradientTape() as tape:
            tape.watch([w0, rates])
            value = outer(w0, rates, steps, guard)
        return value, tape.gradient(value, [w0, rates])

    value, (g_w, g_r) = grads(3, 2.0)
    one_value, (one_w, one_r) = grads(1, None)
    assert math.isnan(grads(3, None)[0].numpy())
    np.testing.assert_allclose(value.numpy(), one_value.numpy(), rtol=1e-14)
    np.testing.assert_allclose(g_w.numpy(), one_w.numpy(), rtol=1e-12)
    np.testing.assert_allclose(g_r.numpy(), one_r.numpy(), rtol=1e-12)
    assert g_r.numpy()[0] != 0 and np.all(g_r.numpy()[1:] == 0)
    eps = 1e-6
    for point, analytic in ((w0, g_w[0]), (rates, g_r[0])):
        step = tf.one_hot(0, tf.size(point), dtype=tf.float64) * eps
        args = lambda d: (w0 + d, rates) if point is w0 else (w0, rates + d)
        fd = (outer(*args(step), 3, 2.0) - outer(*args(-step), 3, 2.0)) / (
            2 * eps)
        np.testing.assert_allclose(analytic.numpy(), fd.numpy(), rtol=1e-6)


def test_per_task_losses_guard_each_task_with_its_rule_state():
    """A vector loss (tasks stacked on axis 0, as the batched program
    runs): each task is guarded alone, momentum state included; with no
    step rejected the guarded loop equals the unguarded one."""
    scale = tf.constant([[1.0], [100.0]])

    def losses(values, step):
        del step
        return tf.reduce_sum(scale * tf.square(values[0] - 1.0), axis=1)

    w0 = tf.zeros([2, 1])
    rule = baselines.SGD(0.02, momentum=0.5)
    free, _, _ = inner_loop.unroll(rule, (), [w0], losses, 4)
    (kept,), state, _ = inner_loop.unroll(rule, (), [w0], losses, 4,
                                          guard=2.0)
    np.testing.assert_array_equal(kept.numpy()[0], free[0].numpy()[0])
    np.testing.assert_array_equal(kept.numpy()[1], [0.0])
    assert np.all(np.isfinite(state[0].numpy()))
    calm = tf.constant([[1.0], [2.0]])
    calm_loss = lambda v, s: tf.reduce_sum(calm * tf.square(v[0] - 1), 1)
    a, _, _ = inner_loop.unroll(rule, (), [w0], calm_loss, 4)
    b, _, _ = inner_loop.unroll(rule, (), [w0], calm_loss, 4, guard=2.0)
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())


def test_config_round_trip_and_bad_values(tmp_path):
    maml = make(2.0, cls=keras_meta.MetaSGD)
    assert maml.get_config()["inner_guard"] == 2.0
    assert keras_meta.MetaSGD.from_config(
        maml.get_config()).inner_guard == 2.0
    assert make(None).get_config()["inner_guard"] is None
    path = str(tmp_path / "guarded.keras")
    maml.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.inner_guard == 2.0
    data = episode()
    np.testing.assert_array_equal(loaded.task_losses(data).numpy(),
                                  maml.task_losses(data).numpy())
    assert keras_meta.MAML(linear_net(), inner_guard=math.inf).inner_guard \
        == math.inf
    for bad in (0, -1.0, math.nan, "2", True, [2.0]):
        with pytest.raises(ValueError, match="inner_guard"):
            keras_meta.MAML(linear_net(), inner_guard=bad)


def test_training_script_defaults_per_inner_rule():
    from examples.maml import config as config_lib
    from examples.maml import tasks as maml_tasks
    from examples.maml import train

    def resolve(**flags):
        return config_lib.resolve(config_lib.Config(**flags))

    sgd, lstm = resolve(), resolve(inner_optimizer="lstm", inner_steps=5)
    assert (sgd.inner_guard, sgd.eval_inner_steps) == (0.0, 10)
    assert (lstm.inner_guard, lstm.eval_inner_steps) == (2.0, 5)
    assert resolve(task="omniglot", inner_optimizer="lslr").inner_guard == 0
    off = resolve(variant="meta_sgd", inner_guard=0.0, train_steps=1)
    assert train.build_maml(off, maml_tasks.make_task(off)).inner_guard \
        is None
    on = resolve(inner_guard=10.0)
    assert train.build_maml(on, maml_tasks.make_task(on)).inner_guard == 10
    with pytest.raises(ValueError, match="--inner_guard"):
        resolve(inner_guard=-1.0)


def test_a_run_recorded_before_the_flag_resumes_unguarded():
    import dataclasses

    from examples.maml import config as config_lib
    from keras_meta import run_dir

    for rule, changes in (("sgd", {}), ("lstm", {"inner_guard": (0.0, 2.0)})):
        current = dataclasses.asdict(config_lib.resolve(config_lib.Config(
            inner_optimizer=rule, eval_inner_steps=10)))
        old = {k: v for k, v in current.items() if k != "inner_guard"}
        assert run_dir.config_changes(
            old, current, config_lib.resume_defaults()) == changes

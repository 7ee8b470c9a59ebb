"""One contract, every MAML variant and inner rule: a table of cases run
through the same checks (one meta-step, evaluate, adapt, save and load)."""

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_meta
from keras_meta.maml import meta_gradients
from keras_meta.maml import task_parallel


def tiny_net(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((1,)),
        keras.layers.Dense(4, activation="tanh", name="body"),
        keras.layers.Dense(1, name="head"),
    ])


CASES = {
    "maml": (keras_meta.MAML, dict(inner_steps=2)),
    "fomaml": (keras_meta.MAML, dict(inner_steps=2, first_order=True)),
    "meta_sgd": (keras_meta.MetaSGD, dict()),
    "maml_plus_plus": (keras_meta.MAMLPlusPlus,
                       dict(inner_steps=2, multi_step_loss_anneal_steps=4)),
    "anil": (keras_meta.ANIL, dict(inner_steps=2)),
    "rule_sgd": (keras_meta.MAML, dict(inner_optimizer="sgd")),
    "rule_meta_sgd": (keras_meta.MAML, dict(inner_optimizer="meta_sgd")),
    "rule_lslr": (keras_meta.MAML, dict(inner_optimizer="lslr",
                                         inner_steps=2)),
    "rule_lstm": (keras_meta.MAML, dict(inner_optimizer="lstm",
                                         inner_steps=2)),
}


def make(case, **kwargs):
    cls, defaults = CASES[case]
    maml = cls(tiny_net(), inner_learning_rate=0.1, **{**defaults, **kwargs})
    maml.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse",
                 metrics=["mae"])
    return maml


def episodes(seed=0):
    return keras_meta.data.sinusoid(shots=4, queries=5, meta_batch_size=2,
                                    seed=seed)


@pytest.fixture(params=sorted(CASES))
def case(request):
    return request.param


def test_contract(case, tmp_path):
    maml = make(case)
    data = next(iter(episodes(seed=3)))
    before = [v.numpy() for v in maml.trainable_variables]

    # One meta-step: every meta-learned weight moves, finitely.
    logs = maml.fit(episodes(), steps_per_epoch=1, verbose=0).history
    assert logs["skipped_steps"] == [0]
    assert int(maml.optimizer.iterations.numpy()) == 1
    for b, v in zip(before, maml.trainable_variables):
        assert np.all(np.isfinite(v.numpy())), v.path
    moved = [not np.array_equal(b, v.numpy())
             for b, v in zip(before, maml.trainable_variables)]
    assert any(moved)
    if maml.inner_optimizer_variables:
        assert any(moved[len(maml.model.trainable_variables):])

    # evaluate reports what task_results computes.
    results = maml.evaluate(tf.data.Dataset.from_tensors(data), verbose=0,
                            return_dict=True)
    losses = maml.task_losses(data).numpy()
    np.testing.assert_allclose(results["post_adapt_loss"],
                               losses[:, -1].mean(), rtol=1e-5)
    np.testing.assert_allclose(results["pre_adapt_loss"],
                               losses[:, 0].mean(), rtol=1e-5)

    # adapt: a plain model whose query loss is task_results' column; the
    # meta-weights stay.
    weights = [v.numpy() for v in maml.weights]
    adapted = maml.adapt(data["support_x"][0], data["support_y"][0])
    pred = adapted(data["query_x"][0], training=True)
    np.testing.assert_allclose(
        float(tf.reduce_mean(tf.square(pred - data["query_y"][0]))),
        losses[0, -1], rtol=1e-5)
    for w, v in zip(weights, maml.weights):
        np.testing.assert_array_equal(w, v.numpy())

    # Save and load: the same weights, numbers and further training.
    path = str(tmp_path / f"{case}.keras")
    maml.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(maml)
    # Only the rule's settings are in the config; its values are weights.
    assert loaded.inner_optimizer.get_config() == (
        maml.inner_optimizer.get_config())
    for a, b in zip(maml.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    # Adam's slots load by position: each comes back in its place.
    for a, b in zip(maml.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    np.testing.assert_array_equal(loaded.task_losses(data).numpy(), losses)
    maml.fit(episodes(seed=1), steps_per_epoch=2, verbose=0)
    loaded.fit(episodes(seed=1), steps_per_epoch=2, verbose=0)
    for a, b in zip(maml.weights, loaded.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6,
                                   err_msg=a.path)


def test_every_case_runs_every_parallelism_the_same(case):
    """The task maps compute the same meta-loss, meta-gradients and query
    losses (batched too where it applies)."""
    data = next(iter(episodes(seed=2)))
    modes = ["vectorized", "sequential"]
    if task_parallel.batchable(make(case)):
        modes.append("batched")
    results = []
    for mode in modes:
        maml = make(case, task_parallelism=mode)
        maml.optimizer.iterations.assign(1)  # mid-anneal for the MSL
        loss, grads, outputs, _ = meta_gradients.compute(maml, data)
        results.append([loss, *grads, outputs["losses"]])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5,
                                       atol=1e-6)

"""Tests of the problem families and functional baselines."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_meta.rules import baselines
from keras_meta.meta import problems


def test_quadratic_loss_by_hand_and_stacking():
    prob = problems.QuadraticProblem(batch_size=3, num_dims=2, num_problems=2)
    inst = prob.sample(0)
    w, y = (t.numpy() for t in inst.task)
    x = inst.params[0].numpy()
    assert w.shape == (2, 3, 2, 2) and x.shape == (2, 3, 2)
    assert 0 <= w.min() and w.max() < 1 and abs(x).max() < 0.1
    per = [np.mean([np.sum((w[p, b] @ x[p, b] - y[p, b]) ** 2)
                    for b in range(3)]) for p in range(2)]
    np.testing.assert_allclose(prob.per_problem_loss(inst.params, inst.task),
                               per, rtol=1e-5)
    np.testing.assert_allclose(float(prob.loss(inst.params, inst.task, None)),
                               sum(per), rtol=1e-5)
    # Stacked problems: each coordinate gets its own problem's gradient.
    params = [tf.constant(x)]
    with tf.GradientTape() as tape:
        tape.watch(params)
        total = prob.loss(params, inst.task, None)
    g_all = tape.gradient(total, params)[0].numpy()
    single = problems.QuadraticProblem(batch_size=3, num_dims=2)
    task1 = (inst.task[0][1:], inst.task[1][1:])
    p1 = [tf.constant(x[1:])]
    with tf.GradientTape() as tape:
        tape.watch(p1)
        l1 = single.loss(p1, task1, None)
    np.testing.assert_allclose(g_all[1:], tape.gradient(l1, p1)[0].numpy(),
                               rtol=1e-5)


@pytest.mark.parametrize("model_fn", [problems.mlp_model, problems.conv_model])
def test_keras_problem_stateless_loss_matches_model(model_fn):
    prob = problems.KerasProblem(model_fn, problems.TeacherData(),
                                 batch_size=8)
    inst = prob.sample(0)
    x, y = prob.batches(inst, 2, 0)
    assert x.shape == (2, 8, 28, 28, 1) and y.shape == (2, 8)
    loss = float(prob.loss(inst.params, (), (x[0], y[0])))
    for v, p in zip(prob.model.trainable_variables, inst.params):
        v.assign(p)
    logits = prob.model(x[0])
    expected = float(tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
        y[0], logits, from_logits=True)))
    assert loss == pytest.approx(expected, rel=1e-5)


def test_quadratic_split_equals_stacked():
    stacked = problems.QuadraticProblem(batch_size=3, num_dims=2,
                                        num_problems=4)
    split = problems.QuadraticProblem(batch_size=3, num_dims=2,
                                      num_problems=4, split=True)
    a, b = stacked.sample(5), split.sample(5)
    assert len(b.params) == 4 and tuple(b.params[0].shape) == (3, 2)
    for params, prob, inst in ((a.params, stacked, a), (b.params, split, b)):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = prob.loss(params, inst.task, None)
        grads = tape.gradient(loss, params)
        if prob is stacked:
            ref_loss, ref_grads = loss, grads[0].numpy()
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    np.testing.assert_allclose(np.stack([g.numpy() for g in grads]),
                               ref_grads, rtol=1e-6)


def test_teacher_pool_is_a_fixed_training_set_in_epochs():
    data = problems.TeacherData(pool_size=64)
    rng = np.random.default_rng(0)
    task = data.sample_task(rng)
    x, y = data.sample_batches(task, 4, 32, rng)  # two epochs of 64
    assert x.shape == (4, 32, 28, 28, 1) and y.shape == (4, 32)
    pool_x = task[2].reshape(64, 28, 28, 1)
    for epoch in (x[:2], x[2:]):
        flat = epoch.reshape(64, -1)
        # Each epoch holds every pool example exactly once.
        order = np.lexsort(flat.T[:3])
        np.testing.assert_array_equal(
            flat[order], pool_x.reshape(64, -1)[np.lexsort(
                pool_x.reshape(64, -1).T[:3])])
    # Labels are the teacher's, as for fresh inputs.
    np.testing.assert_array_equal(
        y.reshape(-1), data._label(task, x.reshape(128, -1)))
    with pytest.raises(ValueError, match="pool_size"):
        problems.TeacherData(pool_size=0)


def test_teacher_labels_use_all_classes():
    data = problems.TeacherData()
    rng = np.random.default_rng(0)
    _, y = data.sample_batches(data.sample_task(rng), 4, 128, rng)
    assert len(np.unique(y)) >= 5


@pytest.mark.skipif(not problems.omniglot_available(),
                    reason="Omniglot zips absent from ../shared/data/omniglot")
def test_omniglot_tasks():
    train = problems.OmniglotData("train")
    held = problems.OmniglotData("heldout")
    assert train.images.shape[1:] == (20, 28, 28, 1)
    assert len(train.images) + len(held.images) == 242
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    assert 0.02 < train.images.mean() < 0.5  # ink is the minority
    rng = np.random.default_rng(0)
    x, y = train.sample_batches(train.sample_task(rng), 2, 16, rng)
    assert x.shape == (2, 16, 28, 28, 1) and y.max() < 10


def test_unknown_problem():
    with pytest.raises(ValueError, match="Unknown problem"):
        problems.make_problem("nope")


@pytest.mark.parametrize("name,keras_opt", [
    ("sgd", lambda lr: keras.optimizers.SGD(lr)),
    ("nag", lambda lr: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)),
    ("rmsprop", lambda lr: keras.optimizers.RMSprop(lr)),
    ("adam", lambda lr: keras.optimizers.Adam(lr)),
])
def test_functional_baselines_match_keras(name, keras_opt):
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(5,)).astype("float32")
    grads = [rng.normal(size=(5,)).astype("float32") for _ in range(4)]
    rule = baselines.make_baseline(name, 0.1)
    params = [tf.constant(x0)]
    state = rule.init(params)
    var = keras.Variable(x0)
    opt = keras_opt(0.1)
    for g in grads:
        ups, state = rule.update((), [tf.constant(g)], state, params, 0)
        params = [params[0] + ups[0]]
        opt.apply([tf.constant(g)], [var])
    np.testing.assert_allclose(params[0].numpy(), var.numpy(), rtol=1e-4,
                               atol=1e-5)

"""benchmarks/fit_lib.py (keras_fit's runs): test data from each seed's
teacher, training data unchanged by it, `--learned` specs."""

import numpy as np

from benchmarks import fit_lib


def test_test_examples_come_from_the_same_teacher_after_the_training_set():
    x, y = fit_lib.dataset(3, 64)
    (x2, y2), (x_test, y_test) = fit_lib.dataset(3, 64, num_test=32)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert x_test.shape == (32,) + x.shape[1:] and y_test.shape == (32,)
    assert not np.any(np.all(x_test[:, None] == x[None], axis=(2, 3, 4)))
    # The labels are those of the training set's teacher.
    teacher = fit_lib.problems.TeacherData()
    task = teacher.sample_task(np.random.default_rng(3))
    np.testing.assert_array_equal(
        teacher._label(task, x_test.reshape(32, -1)), y_test)


def test_train_returns_training_and_test_loss():
    (x, y), test = fit_lib.dataset(0, 256, num_test=128)
    train_loss, test_loss = fit_lib.train(
        "mlp_relu", fit_lib.learned_optimizer_factory("default"), 0, x, y,
        steps=20, batch_size=64, test_data=test)
    assert np.isfinite(train_loss) and np.isfinite(test_loss)
    assert fit_lib.train("mlp_relu", fit_lib.learned_optimizer_factory(
        "default"), 0, x, y, steps=20, batch_size=64) == train_loss


def test_learned_specs():
    default = fit_lib.learned_optimizer_factory("default")()
    assert default.use_ema and default.rule_config.dense_table_decay is False
    named = fit_lib.learned_optimizer_factory("per_tensor")()
    assert not named.use_ema and named.weights == "per_tensor"
    averaged = fit_lib.learned_optimizer_factory("normalized+ema")()
    assert averaged.use_ema and averaged.rule_config.dense_table_decay

"""Tests of the meta-training task distribution (keras_meta.meta.task_family)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_meta.meta import problems
from keras_meta.meta import task_family
from keras_meta.meta import trainer
from keras_meta.rules import baselines
from keras_meta.rules.base import UpdateRule

NO_DATA = "/nonexistent/omniglot"


@pytest.mark.parametrize("kind", task_family.KINDS + task_family.EXTRA_KINDS)
@pytest.mark.parametrize("size", task_family.SIZES)
def test_each_kind_builds_with_finite_loss_and_gradients(kind, size):
    rng = np.random.default_rng(size)
    prob = task_family.make_task(kind, size, rng, directory=NO_DATA)
    assert prob.name.startswith(("ae" if kind == "autoencoder" else kind)
                                + str(size))
    inst = prob.sample(3)
    batches = prob.batches(inst, 2, 0)
    example = ((size // 2) ** 2,) if kind == "tokens" else (size, size)
    for part in batches:  # training and validation examples
        assert part[0].shape[:4] == (2, prob.batch_size) + example
    batch = tf.nest.map_structure(lambda b: b[0], batches)
    params = list(inst.params)
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = prob.loss(params, prob.task_tensors(inst), batch)
    grads = tape.gradient(loss, params)
    assert np.isfinite(float(loss)) and float(loss) > 0
    validation = prob.validation_loss(params, prob.task_tensors(inst), batch)
    assert np.isfinite(float(validation)) and float(validation) != float(loss)
    assert all(np.all(np.isfinite(g)) for g in grads)
    assert any(float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


def test_patch_tokens_code_each_2x2_patch_and_its_position():
    image = np.zeros((4, 4, 1), "float32")
    image[0, 1] = image[1, 0] = 1.0  # patch 0: bits 2 and 4 -> pattern 6
    image[3, 3] = 0.6  # patch 3 (position 3): bit 8 -> 3 * 16 + 8
    image[2, 0] = 0.4  # below half ink: blank
    np.testing.assert_array_equal(task_family.patch_tokens(image[None]),
                                  [[6, 16, 32, 56]])
    prob = task_family.make_task("tokens", 8, np.random.default_rng(0),
                                 directory=NO_DATA)
    (tokens, labels), _ = prob.batches(prob.sample(0), 3, 1)
    table = prob.model.layers[0]
    assert isinstance(table, keras.layers.Embedding)
    assert table.input_dim == 16 * 16 and tokens.dtype == tf.int32
    assert 0 <= int(tf.reduce_min(tokens)) <= int(tf.reduce_max(tokens)) < 256
    # A minibatch leaves rows of the table untouched (sparse rows).
    assert len(np.unique(tokens.numpy()[0])) < table.input_dim


def test_teacher_tasks_label_fresh_inputs_by_a_fixed_teacher():
    prob = task_family.make_task("teacher", 8, np.random.default_rng(1),
                                 directory=NO_DATA)
    inst = prob.sample(2)
    teacher = np.asarray(inst.task["data"])
    assert teacher.shape == (64, prob.num_classes)
    (x, y), (x_val, y_val) = prob.batches(inst, 3, 4)
    for inputs, labels in ((x, y), (x_val, y_val)):
        flat = inputs.numpy().reshape(3, prob.batch_size, 64)
        np.testing.assert_array_equal(labels, np.argmax(flat @ teacher, -1))
    assert not np.allclose(x, x_val)  # validation examples are new ones
    again, _ = prob.batches(inst, 3, 4)
    np.testing.assert_array_equal(again[0], x)
    assert not np.allclose(prob.batches(inst, 3, 5)[0][0], x)
    easy = task_family.make_task("easy_teacher", 8, np.random.default_rng(1),
                                 directory=NO_DATA)
    assert np.linalg.matrix_rank(np.asarray(easy.sample(2).task["data"])) == 2
    with pytest.raises(ValueError, match="kind must be one of"):
        task_family.make_task("lstm", 8, np.random.default_rng(1))


def test_regression_noise_is_fixed_per_drawing():
    prob = task_family.make_task("regression", 8, np.random.default_rng(2),
                                 directory=NO_DATA)
    inst = prob.sample(1)
    _, hidden, out, _ = inst.task["data"]
    (x, y), (x_val, y_val) = prob.batches(inst, 20, 3)
    flat = x.numpy().reshape(-1, 64)
    noise = y.numpy().ravel() - np.tanh(flat @ hidden) @ out
    assert 0.05 < noise.std() < 0.6
    # The same drawing always carries the same noise (memorizable).
    _, first = np.unique(flat, axis=0, return_index=True)
    repeats = 0
    for i, row in enumerate(flat):
        j = first[np.flatnonzero(np.all(flat[first] == row, axis=1))[0]]
        if j != i:
            repeats += 1
            np.testing.assert_allclose(noise[i], noise[j], atol=1e-5)
    assert repeats > 0
    loss = prob.loss(inst.params, prob.task_tensors(inst),
                     tf.nest.map_structure(lambda b: b[0], ((x, y),)))
    assert np.isfinite(float(loss))


def test_augmentation_scales_loss_and_reparameterizes_weights():
    rng = np.random.default_rng(0)
    prob = task_family.make_task("mlp", 8, rng, directory=NO_DATA)
    plain = task_family.ClassificationProblem(
        prob.model, prob.images, prob.batch_size,
        task_family.NO_AUGMENTATION, "plain", prob.num_classes)
    aug = task_family.Augmentation(probability=1.0)
    prob.augmentation = aug
    inst, ref = prob.sample(7), plain.sample(7)
    scales, loss_scale = prob.task_tensors(inst)
    assert float(loss_scale) != 1.0 and len(set(map(float, scales))) > 1
    assert all(0.1 <= float(s) <= 10 for s in scales)
    # The weights the model runs with are the plain init times init_scale.
    weights = [s * p for s, p in zip(scales, inst.params)]
    ratios = [float(tf.reduce_sum(w * r) / tf.reduce_sum(r * r))
              for w, r in zip(weights, ref.params) if r.shape.rank == 2]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-4)
    assert 0.5 <= ratios[0] <= 2.0
    batch = tf.nest.map_structure(lambda b: b[0], prob.batches(inst, 1, 0))
    expected = plain.loss(weights, plain.task_tensors(ref), batch)
    np.testing.assert_allclose(
        float(prob.loss(inst.params, (scales, loss_scale), batch)),
        float(loss_scale) * float(expected), rtol=1e-5)


def test_validation_examples_are_drawings_never_trained_on():
    prob = task_family.make_task("mlp", 8, np.random.default_rng(0),
                                 directory=NO_DATA)
    inst = prob.sample(0)
    (x, y), (x_val, y_val) = prob.batches(inst, 3, 1)
    images = prob.images[np.asarray(inst.task["data"])]  # [classes, 20, ...]
    flat = lambda a: a.numpy().reshape(-1, 64)  # noqa: E731

    def drawing_index(examples, labels):
        found = []
        for e, c in zip(flat(examples), labels.numpy().ravel()):
            same = np.all(images[c].reshape(20, 64) == e, axis=1)
            found.append(set(np.flatnonzero(same)))
        return found

    # (Synthetic drawings of a class can coincide; ask only that each
    # example is one of the right drawings.)
    assert all(i & set(range(task_family.TRAIN_DRAWINGS))
               for i in drawing_index(x, y))
    assert all(i & set(range(task_family.TRAIN_DRAWINGS, 20))
               for i in drawing_index(x_val, y_val))


def test_same_seed_same_tasks_and_synthetic_fallback():
    a = task_family.sample_tasks(5, 6, directory=NO_DATA)
    b = task_family.sample_tasks(5, 6, directory=NO_DATA)
    assert [p.name for p in a] == [p.name for p in b]
    assert {p.name.split("_")[0][:2] for p in a} == {"ml", "co", "ae"}
    assert all(p.name.endswith("synthetic") for p in a)
    images, source = task_family.character_images(8, NO_DATA)
    assert source == "synthetic" and images.shape[1:] == (20, 8, 8, 1)
    assert set(np.unique(images)) <= {0.0, 1.0}


def test_layer_norm_option_adds_normalized_architectures_only_when_asked():
    plain = [p.name for p in task_family.sample_tasks(0, 12,
                                                       directory=NO_DATA)]
    zero = task_family.sample_tasks(0, 12, directory=NO_DATA, layer_norm=0.0)
    assert [p.name for p in zero] == plain
    every = task_family.sample_tasks(0, 12, directory=NO_DATA, layer_norm=1.0)
    for problem in every:
        has_ln = any(isinstance(layer, keras.layers.LayerNormalization)
                     for layer in problem.model.layers)
        assert has_ln == (not problem.name.startswith("ae"))
        assert has_ln == ("_ln_" in problem.name)
    # A normalized task trains under a rule like any other.
    problem = next(p for p in every if p.name.startswith("mlp"))
    instance = problem.sample(0)
    batch = problem.batches(instance, 1, 0)
    task = problem.task_tensors(instance)
    first = [b[0] for b in batch[0]], [b[0] for b in batch[1]]
    assert np.isfinite(float(problem.loss(instance.params, task, first)))
    with pytest.raises(ValueError, match="layer_norm must be a probability"):
        task_family.sample_tasks(0, 2, directory=NO_DATA, layer_norm=2.0)


@pytest.mark.skipif(not problems.omniglot_available(),
                    reason="Omniglot zips not in ../shared/data/omniglot")
def test_omniglot_tasks_use_the_training_alphabets_only():
    chars = task_family.training_characters()
    alphabets = {k[0] for k in chars}
    assert not alphabets & set(problems.OMNIGLOT_HELD_OUT)
    assert alphabets == {"Balinese", "Early_Aramaic", "Greek",
                         "Japanese_(katakana)", "Korean", "Latin"}
    for size in task_family.SIZES:
        images, source = task_family.character_images(size)
        assert source == "omniglot"
        assert images.shape == (len(chars), 20, size, size, 1)
        assert 0.0 <= images.min() and images.max() <= 1.0
    held = [v for k, v in problems.load_omniglot(None, 28).items()
            if k[0] in problems.OMNIGLOT_HELD_OUT]
    small = tf.image.resize(np.concatenate(held), (8, 8), "area").numpy()
    train8 = task_family.character_images(8)[0].reshape(-1, 64)
    # No held-out drawing appears among the training images.
    distances = np.min(np.sum(np.abs(
        small.reshape(-1, 1, 64)[:50] - train8[None]), -1), -1)
    assert distances.min() > 0


class SignRate(UpdateRule):
    """Sign descent at a learned rate: dict meta-parameters, cheap."""

    def init_meta_params(self, seed):
        return {"log_lr": np.array(np.log(1e-3))}

    def update(self, meta_params, grads, state, values, step):
        rate = tf.exp(meta_params["log_lr"])
        return [-rate * tf.sign(g) for g in grads], state


def test_pes_meta_step_on_the_task_family():
    probs = task_family.sample_tasks(1, 2, kinds=("mlp", "autoencoder"),
                                     sizes=(8,), directory=NO_DATA)
    mt = trainer.MetaTrainer(probs, rule=SignRate(), unroll=2, horizon=4,
                             estimator="pes", num_particles=2, seed=0,
                             vectorize=True, meta_objective="validation")
    logs = [mt.meta_step() for _ in range(2)]
    assert all(l["applied"] and l["finite_particles"] == 2 for l in logs)
    assert all(np.isfinite(l["objective"]) for l in logs)


def test_run_rule_reports_the_final_validation_loss():
    prob = task_family.make_task("mlp", 8, np.random.default_rng(0),
                                 directory=NO_DATA)
    inst = prob.sample(0)
    sgd = baselines.SGD(0.0)  # no step: the final parameters are the initial
    losses, val = trainer.run_rule(sgd, prob, inst, 3, seed=1,
                                   return_validation=True)
    assert losses.shape == (4,) and np.isfinite(val)
    task = prob.task_tensors(inst)
    last = prob.batches(inst, 4, 1)
    expected = prob.validation_loss(
        list(inst.params), task, tf.nest.map_structure(lambda b: b[3], last))
    assert val == pytest.approx(float(expected), rel=1e-5)
    quadratic = problems.QuadraticProblem()
    with pytest.raises(ValueError, match="validation_loss"):
        trainer.run_rule(sgd, quadratic, quadratic.sample(0), 2,
                         return_validation=True)

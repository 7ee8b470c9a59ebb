"""The table of bad inputs: each gets one clear exception, raised before
anything is compiled, whose message says what was given and what was
expected. BUILD_NOTES.md lists the same table."""

import os

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_meta
from keras_meta.data import image_classes
from keras_meta.optimizers import weights_io


def classifier(outputs=5, inputs=4):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((inputs,)),
                             keras.layers.Dense(outputs)])


def classification_episode(ways=5, shots=2, features=4, labels=None):
    rng = np.random.default_rng(0)
    y = np.tile(np.repeat(np.arange(ways), shots), (2, 1)).astype("int32")
    if labels is not None:
        y = labels(y)
    x = rng.normal(size=y.shape + (features,)).astype("float32")
    return {"support_x": x, "support_y": y, "query_x": x, "query_y": y}


def fit_classifier(net, data, loss=None):
    maml = keras_meta.MAML(net)
    maml.compile(optimizer="sgd", loss=loss or keras.losses.
                 SparseCategoricalCrossentropy(from_logits=True))
    maml.fit(tf.data.Dataset.from_tensors(data), verbose=0)


def fit_regression(data, net=None, loss="mse", optimizer="sgd"):
    keras.utils.set_random_seed(0)
    net = net or keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    maml = keras_meta.MAML(net)
    maml.compile(optimizer=optimizer, loss=loss)
    maml.fit(tf.data.Dataset.from_tensors(data), verbose=0)


def sinusoid_episode(**changes):
    data = next(iter(keras_meta.data.sinusoid(shots=5, queries=5,
                                              meta_batch_size=2, seed=0)))
    data = {k: v.numpy() for k, v in data.items()}
    data.update(changes)
    return data


def few_classes():
    rng = np.random.default_rng(0)
    return image_classes.ImageClasses(
        images=rng.integers(0, 255, (12, 8, 8, 1), dtype=np.uint8),
        labels=np.repeat(np.arange(3), 4).astype("int32"),
        class_names=["a", "b", "c"])


def bad_phi_file(path):
    phi, config = weights_io.load_phi(weights_io.pretrained_path("per_tensor"))
    phi["out/kernel"] = phi["out/kernel"][:-1]
    arrays = dict(phi, __config__=np.array(
        __import__("json").dumps(config.to_dict())))
    np.savez(path, **arrays)
    return path


class PreparedBuilder:
    """Stands in for a prepared TFDS builder (no network, no files)."""

    class info:  # noqa: N801
        splits = {"train": None, "test": None}

    def is_prepared(self):
        return True


CASES = {
    # Episodes against the model and the loss.
    "support and query inputs disagree": (
        lambda tmp, mp: fit_regression(sinusoid_episode(
            query_x=np.zeros((2, 5, 2), "float32"))),
        ValueError, "'support_x' and 'query_x' must agree"),
    "support and query dtypes disagree": (
        lambda tmp, mp: fit_regression(sinusoid_episode(
            query_y=np.zeros((2, 5, 1), "float64"))),
        ValueError, "must have the same dtype; got float32 and float64"),
    "label past the last class": (
        lambda tmp, mp: fit_classifier(classifier(), classification_episode(
            labels=lambda y: np.where(y == 4, 7, y))),
        ValueError, r"labels must be in 0..4 \(the model has 5 outputs\); "
                    "got labels from 0 to 7"),
    "negative label": (
        lambda tmp, mp: fit_classifier(classifier(), classification_episode(
            labels=lambda y: y - 1)),
        ValueError, "labels must be in 0..4 .* got labels from -1 to 3"),
    "model output size is not ways": (
        lambda tmp, mp: fit_classifier(classifier(outputs=10),
                                       classification_episode()),
        ValueError, "episodes are 5-way .* but the model has 10 outputs"),
    "regression model, classification loss": (
        lambda tmp, mp: fit_regression(sinusoid_episode(), loss=keras.losses.
                                       SparseCategoricalCrossentropy()),
        ValueError, "a classification loss\\) but the model gives 1 output"),
    "regression targets, classification loss": (
        lambda tmp, mp: fit_classifier(classifier(inputs=1), sinusoid_episode(
            support_y=np.full((2, 5), 0.37, "float32"),
            query_y=np.full((2, 5), 0.37, "float32"))),
        ValueError, r"targets are not class indices \(e.g. 0.37\)"),
    "targets would broadcast against outputs": (
        lambda tmp, mp: fit_regression(sinusoid_episode(
            support_y=np.zeros((2, 5), "float32"),
            query_y=np.zeros((2, 5), "float32"))),
        ValueError, r"outputs \[1\] per example but the targets are \[\]"),
    "inputs of the wrong shape for the model": (
        lambda tmp, mp: fit_classifier(classifier(), classification_episode(
            features=3)),
        ValueError, r"the model takes inputs of shape \[\?, 4\]"),
    # Data sources.
    "fewer classes than ways": (
        lambda tmp, mp: keras_meta.data.episodes(few_classes(), ways=5),
        ValueError, "ways=5 needs at least 5 classes; the source has 3"),
    "class with too few images": (
        lambda tmp, mp: keras_meta.data.episodes(few_classes(), ways=3,
                                                 shots=2, queries=3),
        ValueError, "shots \\+ queries = 5 images per class are needed"),
    "data folder does not exist": (
        lambda tmp, mp: keras_meta.data.load_omniglot(str(tmp / "missing")),
        FileNotFoundError, "Omniglot data not found at .*missing"),
    "data folder holds no images": (
        lambda tmp, mp: keras_meta.data.load_omniglot(str(tmp)),
        ValueError, "No Omniglot PNG images found under"),
    "corrupt zip": (
        lambda tmp, mp: (tmp.joinpath("images_background.zip").write_bytes(
            b"not a zip"), keras_meta.data.load_omniglot(str(tmp))),
        ValueError, "images_background.zip' is not a readable zip"),
    "unknown TFDS name": (
        lambda tmp, mp: keras_meta.data.load_tfds("no_such_dataset"),
        ValueError, "Unknown TFDS dataset 'no_such_dataset'"),
    "unknown TFDS split": (
        lambda tmp, mp: (mp.setattr("tensorflow_datasets.builder",
                                    lambda *a, **k: PreparedBuilder()),
                         keras_meta.data.load_tfds("mnist", split="tset")),
        ValueError, r"'mnist' has no split 'tset' .* \['test', 'train'\]"),
    # Arguments.
    "inner_steps < 1": (
        lambda tmp, mp: keras_meta.MAML(classifier(), inner_steps=0),
        ValueError, "`inner_steps` must be an int >= 1; got 0"),
    "negative inner learning rate": (
        lambda tmp, mp: keras_meta.MAML(classifier(),
                                        inner_learning_rate=-0.1),
        ValueError, "`inner_learning_rate` must be a finite float >= 0; got -0.1"),
    "negative meta learning rate": (
        lambda tmp, mp: fit_regression(
            sinusoid_episode(), optimizer=keras.optimizers.SGD(-0.1)),
        ValueError, "meta-optimizer's learning rate must be a finite number >= 0; got -0.1"),
    "negative LearnedOptimizer learning rate": (
        lambda tmp, mp: keras_meta.LearnedOptimizer(learning_rate=-1.0),
        ValueError, "must be a finite float >= 0; got -1.0"),
    "infinite LearnedOptimizer learning rate": (
        lambda tmp, mp: keras_meta.LearnedOptimizer(learning_rate=float("inf")),
        ValueError, "must be a finite float >= 0; got inf"),
    "LearnedOptimizer weights of the wrong shape": (
        lambda tmp, mp: keras_meta.LearnedOptimizer(
            weights=bad_phi_file(str(tmp / "bad.npz"))),
        ValueError, "out/kernel"),
    "LearnedOptimizer weights file missing": (
        lambda tmp, mp: keras_meta.LearnedOptimizer(
            weights=str(tmp / "none.npz")),
        FileNotFoundError, "none.npz"),
    "sinusoid shots < 1": (
        lambda tmp, mp: keras_meta.data.sinusoid(shots=0),
        ValueError, "shots"),
    "episodes shots < 1": (
        lambda tmp, mp: keras_meta.data.episodes(few_classes(), shots=0),
        ValueError, "`shots` must be an int >= 1; got 0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_a_clear_error(case, tmp_path, monkeypatch):
    trigger, error, message = CASES[case]
    with pytest.raises(error, match=message):
        trigger(tmp_path, monkeypatch)


def test_checks_run_before_anything_is_compiled():
    maml = keras_meta.MAML(classifier())
    maml.compile(optimizer="sgd", loss=keras.losses.
                 SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="labels must be in"):
        maml.fit(tf.data.Dataset.from_tensors(classification_episode(
            labels=lambda y: y + 3)), verbose=0)
    assert maml.train_function is None


def test_settings_changed_on_a_built_maml_take_effect_or_raise():
    """Evaluation settings are traced again; the others are fixed (a
    change used to be ignored, silently, by the steps traced before)."""
    maml = keras_meta.MAML(classifier(), inner_learning_rate=0.5)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    maml.compile(optimizer="sgd", loss=loss)
    data = classification_episode()
    before = maml.task_losses(data).numpy()
    maml.fit(tf.data.Dataset.from_tensors(data), verbose=0)
    with pytest.raises(AttributeError, match="`inner_steps` is fixed once "
                       "a MAML is built .*got a new value 3"):
        maml.inner_steps = 3
    with pytest.raises(AttributeError, match="`first_order` is fixed"):
        maml.first_order = True
    assert maml.inner_steps == 1 and not maml.first_order
    # A guard that undoes every step: the next evaluation sees it.
    trained = maml.task_losses(data).numpy()
    assert not np.allclose(trained, before)
    maml.inner_guard = 1e-9
    guarded = maml.task_losses(data).numpy()
    np.testing.assert_allclose(guarded[:, 1], guarded[:, 0], rtol=1e-6)
    # fit traces again too: every inner step is undone, so the query loss
    # after adaptation is the one before it.
    logs = maml.fit(tf.data.Dataset.from_tensors(data), verbose=0).history
    np.testing.assert_allclose(logs["post_adapt_loss"], logs["pre_adapt_loss"],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="`inner_guard` must be None or a "
                       "number > 0"):
        maml.inner_guard = -1.0
    with pytest.raises(ValueError, match="eval_inner_steps"):
        maml.eval_inner_steps = 0


def test_changed_eval_steps_ask_for_compile_again():
    """The per-step loss metrics are made by compile: evaluating with
    another step count before compiling again names both counts."""
    maml = keras_meta.MAML(classifier(), eval_inner_steps=3)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    maml.compile(optimizer="sgd", loss=loss)
    data = tf.data.Dataset.from_tensors(classification_episode())
    maml.eval_inner_steps = 1
    with pytest.raises(ValueError, match=r"runs 1 inner steps \(eval_inner_"
                       r"steps=1, inner_steps=1\) but the model was compiled "
                       "for 3; call compile"):
        maml.evaluate(data, verbose=0)
    maml.compile(optimizer="sgd", loss=loss)
    logs = maml.evaluate(data, verbose=0, return_dict=True)
    assert "query_loss_after_step_1" in logs
    assert "query_loss_after_step_2" not in logs

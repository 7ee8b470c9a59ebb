"""Saved files: version stamps, files from older releases, safe mode."""

import json
import os
import zipfile

import numpy as np
import pytest

import keras
import keras_meta
from keras_meta import saving
from keras_meta.maml.seed_states import seed_states

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def tiny_maml():
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((1,)), keras.layers.Dense(2),
                            keras.layers.Dense(1)])
    maml = keras_meta.MAML(net)
    maml.compile(optimizer="sgd", loss="mse")
    return maml


def rewrite_config(src, dst, change):
    """Copies a .keras zip, applying `change` to its config.json dict."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                change(config)
                data = json.dumps(config).encode()
            zout.writestr(item, data)


def test_saved_config_carries_the_version():
    config = tiny_maml().get_config()
    assert config[saving.VERSION_KEY] == keras_meta.__version__
    assert config[saving.FORMAT_KEY] == saving.FORMAT
    optimizer = keras_meta.LearnedOptimizer(weights="init")
    assert optimizer.get_config()[saving.VERSION_KEY] == keras_meta.__version__


@pytest.mark.parametrize("name", ["meta_sgd.keras", "learned_optimizer.keras"])
def test_files_saved_by_release_0_1_0_load(name):
    # Written by keras_meta 0.1.0 (commit e0d0c6a) before stamps existed;
    # each had been trained for 2 steps.
    model = keras.models.load_model(os.path.join(FIXTURES, name))
    assert int(model.optimizer.iterations.numpy()) == 2
    with zipfile.ZipFile(os.path.join(FIXTURES, name)) as z:
        assert saving.VERSION_KEY not in z.read("config.json").decode()
    if isinstance(model, keras_meta.MAML):
        assert model.inner_optimizer.learned_rates == "per_parameter"
        adapted = model.adapt(np.ones((5, 1), "float32"),
                              np.ones((5, 1), "float32"))
        assert np.all(np.isfinite(adapted.predict(np.ones((3, 1)),
                                                  verbose=0)))
    else:
        assert isinstance(model.optimizer, keras_meta.LearnedOptimizer)
        model.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)
        assert int(model.optimizer.iterations.numpy()) == 3


def from_the_future(config):
    config["config"][saving.VERSION_KEY] = "9.0.0"
    config["config"][saving.FORMAT_KEY] = saving.FORMAT + 1


def rename_an_argument(config):
    config["config"][saving.VERSION_KEY] = "0.0.9"
    config["config"]["inner_lr"] = config["config"].pop("inner_learning_rate")


@pytest.mark.parametrize("change, message", [
    (from_the_future,
     rf"saved by keras_meta 9.0.0 \(file format {saving.FORMAT + 1}\); this "
     rf"is keras_meta {keras_meta.__version__}, which reads formats up to "
     rf"{saving.FORMAT}"),
    (rename_an_argument,
     rf"saved by keras_meta 0.0.9 and this is keras_meta "
     rf"{keras_meta.__version__}; its config does not fit this release"),
])
def test_a_file_this_release_cannot_read_names_both_versions(
        change, message, tmp_path):
    path = str(tmp_path / "m.keras")
    tiny_maml().save(path)
    changed = str(tmp_path / "changed.keras")
    rewrite_config(path, changed, change)
    with pytest.raises(ValueError, match=message):
        keras.models.load_model(changed)


def test_loading_never_runs_code_from_the_file(tmp_path):
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1),
                            keras.layers.Lambda(lambda x: x * 2.0)])
    maml = keras_meta.MAML(net)
    maml.compile(optimizer="sgd", loss="mse")
    path = str(tmp_path / "lambda.keras")
    maml.save(path)
    with pytest.raises(ValueError, match="safe_mode"):
        keras.models.load_model(path)


def test_dropout_seed_state_is_saved_and_training_continues_identically(
        tmp_path):
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((1,)), keras.layers.Dense(8),
                            keras.layers.Dropout(0.5, seed=1),
                            keras.layers.Dense(1)])
    maml = keras_meta.MAML(net, inner_learning_rate=0.1)
    maml.compile(optimizer="adam", loss="mse")
    data = keras_meta.data.sinusoid(shots=5, meta_batch_size=2, seed=0)
    maml.fit(data, steps_per_epoch=3, verbose=0)
    path = str(tmp_path / "dropout.keras")
    maml.save(path)
    loaded = keras.models.load_model(path)
    (state,) = seed_states(maml.model)
    assert int(state.numpy()[1]) != 0  # the dropout seeds have advanced
    np.testing.assert_array_equal(seed_states(loaded.model)[0].numpy(),
                                  state.numpy())
    more = keras_meta.data.sinusoid(shots=5, meta_batch_size=2, seed=1)
    maml.fit(more, steps_per_epoch=2, verbose=0)
    loaded.fit(more, steps_per_epoch=2, verbose=0)
    for a, b in zip(maml.model.weights, loaded.model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

"""MAML with the conv4 network on Omniglot images."""

import os
import zipfile

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_meta

@pytest.fixture(scope="module")
def omniglot(omniglot_dir):
    return keras_meta.data.load_omniglot(omniglot_dir)


def make_maml(ways, filters=16):
    keras.utils.set_random_seed(0)
    net = keras_meta.models.conv4_classifier(ways, filters=filters)
    maml = keras_meta.MAML(net, inner_learning_rate=0.4 * ways,
                           eval_inner_steps=3)
    maml.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    return maml


def test_saved_model_classifies_raw_pngs_like_the_pipeline(tmp_path,
                                                          omniglot_dir):
    # One character's 20 drawings, as files and through the cached pipeline.
    with zipfile.ZipFile(os.path.join(omniglot_dir,
                                      "images_background_small1.zip")) as z:
        names = sorted(n for n in z.namelist()
                       if "/Greek/character01/" in n and n.endswith(".png"))
        pngs = [z.read(n) for n in names]
        folder = tmp_path / "Greek" / "character01"
        folder.mkdir(parents=True)
        for n, data in zip(names, pngs):
            (folder / os.path.basename(n)).write_bytes(data)
    cached = keras_meta.data.load_omniglot(str(tmp_path)).images
    raw = np.stack([tf.io.decode_png(p, channels=1).numpy() for p in pngs])
    assert raw.shape == (20, 105, 105, 1) and raw.dtype == np.uint8

    maml = make_maml(5)
    labels = np.arange(20) % 5
    maml.save(str(tmp_path / "m.keras"))
    loaded = keras.models.load_model(str(tmp_path / "m.keras"))
    adapted = loaded.adapt(cached[:10], labels[:10], steps=2)
    from_raw = adapted.predict(raw[10:], verbose=0)
    from_cache = adapted.predict(cached[10:], verbose=0)
    np.testing.assert_allclose(from_raw, from_cache, rtol=1e-5, atol=1e-5)
    # And the same as the MAML model that was saved.
    original = maml.adapt(cached[:10], labels[:10], steps=2)
    np.testing.assert_allclose(original.predict(raw[10:], verbose=0),
                               from_raw, rtol=1e-5, atol=1e-5)


def test_short_meta_training_beats_chance_on_held_out_alphabets(omniglot):
    train = omniglot.subset(groups=omniglot.groups[:6])
    test = omniglot.subset(groups=omniglot.groups[6:])
    maml = make_maml(5)
    maml.fit(keras_meta.data.episodes(train, ways=5, shots=1, queries=1,
                                      meta_batch_size=8, seed=0,
                                      rotations=True),
             steps_per_epoch=160, verbose=0)
    logs = maml.evaluate(
        keras_meta.data.episodes(test, ways=5, shots=1, queries=15,
                                 meta_batch_size=20, seed=1),
        steps=5, return_dict=True, verbose=0)
    # Chance is 20%; adaptation must clearly beat it and the unadapted net.
    assert logs["post_adapt_accuracy"] > 0.4, logs
    assert logs["post_adapt_accuracy"] > logs["pre_adapt_accuracy"] + 0.1, logs

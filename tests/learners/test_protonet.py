"""keras_meta.ProtoNet: distances, training, adapt, saving, raw PNGs."""

import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_meta


def identity_embedding(dim=2):
    net = keras.Sequential([keras.Input((dim,)), keras.layers.Dense(
        dim, kernel_initializer="identity", bias_initializer="zeros")])
    return net


def tiny_episode():
    # 2 classes, 2 shots: prototypes (0, 0) and (2, 2).
    return {
        "support_x": np.array([[[0, 1], [0, -1], [2, 1], [2, 3]]], "float32"),
        "support_y": np.array([[0, 0, 1, 1]], "int32"),
        "query_x": np.array([[[1, 0], [3, 3]]], "float32"),
        "query_y": np.array([[0, 1]], "int32"),
    }


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_logits_are_the_hand_computed_distances(distance):
    protonet = keras_meta.ProtoNet(identity_embedding(), distance=distance,
                                   scale=2.0)
    logits = protonet(tiny_episode()).numpy()[0]
    centers = np.array([[0.0, 0.0], [2.0, 2.0]])
    queries = np.array([[1.0, 0.0], [3.0, 3.0]])
    if distance == "euclidean":
        expected = -2.0 * ((queries[:, None] - centers[None]) ** 2).sum(-1)
    else:
        unit = lambda v: v / np.maximum(  # noqa: E731
            np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)
        expected = 2.0 * unit(queries) @ unit(centers).T
    np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)


def test_transductive_steps_are_hand_computed_soft_k_means(tmp_path):
    """One round moves each prototype to the mean of its support example
    and all queries weighted by their softmax probabilities; training,
    `adapt` and a changed setting behave as documented."""
    episode = tiny_episode()
    plain = keras_meta.ProtoNet(identity_embedding())
    refined = keras_meta.ProtoNet(identity_embedding(), transductive_steps=1)
    support = episode["support_x"][0]
    queries = episode["query_x"][0]
    centers = np.array([[0.0, 0.0], [2.0, 2.0]])
    for _ in range(2):
        logits = -((queries[:, None] - centers[None]) ** 2).sum(-1)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        sums = np.stack([support[:2].sum(0), support[2:].sum(0)])
        centers = (sums + probs.T @ queries) / (2 + probs.sum(0))[:, None]
        if _ == 0:
            one_round = -((queries[:, None] - centers[None]) ** 2).sum(-1)
    two_rounds = -((queries[:, None] - centers[None]) ** 2).sum(-1)
    np.testing.assert_allclose(refined(episode).numpy()[0], one_round,
                               rtol=1e-5, atol=1e-6)
    # Training sees the support set alone, as adapt does.
    np.testing.assert_array_equal(refined(episode, training=True).numpy(),
                                  plain(episode, training=True).numpy())
    adapted = refined.adapt(episode["support_x"][0], episode["support_y"][0])
    np.testing.assert_allclose(adapted.predict(queries, verbose=0),
                               plain(episode).numpy()[0], rtol=1e-5,
                               atol=1e-6)
    # A changed setting reaches functions traced before it.
    refined.compile()
    data = tf.data.Dataset.from_tensors(episode)
    np.testing.assert_allclose(refined.predict(data, verbose=0)[0],
                               one_round, rtol=1e-5, atol=1e-6)
    refined.transductive_steps = 2
    np.testing.assert_allclose(refined.predict(data, verbose=0)[0],
                               two_rounds, rtol=1e-5, atol=1e-6)
    refined.save(tmp_path / "t.keras")
    assert keras.models.load_model(
        tmp_path / "t.keras").transductive_steps == 2
    refined.export(str(tmp_path / "served"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "served"))
    out = served.signatures["adapt_and_predict"](
        support_x=support, support_y=episode["support_y"][0],
        query_x=queries)["output_0"].numpy()
    np.testing.assert_allclose(out, two_rounds, rtol=1e-5, atol=1e-6)
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="`transductive_steps` must be "
                           f"an int >= 0; got {bad!r}"):
            keras_meta.ProtoNet(identity_embedding(), transductive_steps=bad)


def test_training_moves_every_embedding_weight_and_lowers_the_loss(
        episodes, make_mlp):
    protonet = keras_meta.ProtoNet(make_mlp(outputs=8))
    protonet.compile(optimizer=keras.optimizers.Adam(1e-2),
                     metrics=["accuracy"])
    before = [v.numpy() for v in protonet.trainable_variables]
    train = tf.data.Dataset.from_tensors(episodes(tasks=8)).repeat()
    held_out = tf.data.Dataset.from_tensors(episodes(tasks=8, seed=1))
    first = protonet.evaluate(held_out, return_dict=True, verbose=0)
    history = protonet.fit(train, steps_per_epoch=30, epochs=2, verbose=0)
    last = protonet.evaluate(held_out, return_dict=True, verbose=0)
    assert all(np.any(b != v.numpy()) for b, v in
               zip(before, protonet.trainable_variables))
    assert history.history["loss"][1] < history.history["loss"][0]
    assert last["loss"] < first["loss"]
    assert last["accuracy"] > 0.9, last


def test_adapt_save_and_load_give_the_episode_predictions(
        tmp_path, episodes, make_mlp):
    protonet = keras_meta.ProtoNet(make_mlp(outputs=5), distance="cosine")
    protonet.compile(metrics=["accuracy"])
    episode = episodes(tasks=2, ways=4)
    expected = protonet.predict(tf.data.Dataset.from_tensors(episode),
                                verbose=0)
    adapted = protonet.adapt(episode["support_x"][1],
                             episode["support_y"][1])
    assert isinstance(adapted, keras.Model)
    assert not isinstance(adapted, keras_meta.ProtoNet)
    got = adapted.predict(episode["query_x"][1], verbose=0)
    np.testing.assert_allclose(got, expected[1], rtol=1e-5, atol=1e-5)
    protonet.save(tmp_path / "p.keras")
    adapted.save(tmp_path / "a.keras")
    loaded = keras.models.load_model(tmp_path / "p.keras")
    assert loaded.distance == "cosine" and loaded.scale == 10.0
    np.testing.assert_allclose(
        loaded.predict(tf.data.Dataset.from_tensors(episode), verbose=0),
        expected, rtol=1e-6)
    np.testing.assert_allclose(
        keras.models.load_model(tmp_path / "a.keras").predict(
            episode["query_x"][1], verbose=0), got, rtol=1e-6)
    results = loaded.task_results(episode)
    assert results["losses"].shape == (2, 1)
    # The optimizer comes back compiled and built.
    assert loaded.compiled and loaded.optimizer is not None


def image_embedding(size=8):
    keras.utils.set_random_seed(0)
    net = keras_meta.models.conv4_classifier(2, filters=4, strided=False,
                                             image_size=(size, size))
    return keras.Model(net.inputs, net.get_layer("flatten").output)


def edge_shifted(images, down, right):
    """[n, h, w, c] moved as the training shift moves them."""
    h, w = images.shape[1:3]
    rows = np.clip(np.arange(h) - down, 0, h - 1)
    cols = np.clip(np.arange(w) - right, 0, w - 1)
    return images[:, rows][:, :, cols]


def test_support_views_average_the_moved_support_embeddings(tmp_path):
    embedding = image_embedding()
    rng = np.random.RandomState(0)
    episode = {
        "support_x": rng.randint(0, 256, (2, 3, 8, 8, 1)).astype("uint8"),
        "support_y": np.array([[0, 1, 2], [2, 0, 1]], "int32"),
        "query_x": rng.randint(0, 256, (2, 6, 8, 8, 1)).astype("uint8"),
        "query_y": np.array([[0, 1, 2] * 2] * 2, "int32"),
    }
    viewed = keras_meta.ProtoNet(embedding, support_shift=1)
    plain = keras_meta.ProtoNet(embedding)
    embed = lambda x: embedding(x, training=False).numpy()  # noqa: E731
    expected = []
    for t in range(2):
        sx = episode["support_x"][t]
        views = np.mean([embed(edge_shifted(sx, d, r))
                         for d in (-1, 0, 1) for r in (-1, 0, 1)], axis=0)
        centers = views[np.argsort(episode["support_y"][t])]
        queries = embed(episode["query_x"][t])
        expected.append(-((queries[:, None] - centers[None]) ** 2).sum(-1))
    got = viewed(episode, training=False).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(plain(episode, training=False).numpy(), got)
    # adapt and export classify as the episode pass does.
    adapted = viewed.adapt(episode["support_x"][1], episode["support_y"][1])
    np.testing.assert_allclose(
        adapted.predict(episode["query_x"][1], verbose=0), expected[1],
        rtol=1e-5, atol=1e-5)
    viewed.export(str(tmp_path / "served"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "served"))
    out = served.signatures["adapt_and_predict"](
        support_x=episode["support_x"][1],
        support_y=episode["support_y"][1],
        query_x=episode["query_x"][1])["output_0"].numpy()
    np.testing.assert_allclose(out, expected[1], rtol=1e-5, atol=1e-5)
    compiled = keras_meta.ProtoNet(embedding, support_shift=1)
    compiled.compile(jit_compile=True)
    np.testing.assert_allclose(
        compiled.predict(tf.data.Dataset.from_tensors(episode), verbose=0),
        got, rtol=1e-5, atol=1e-5)
    viewed.compile()
    viewed.save(tmp_path / "p.keras")
    loaded = keras.models.load_model(tmp_path / "p.keras")
    assert loaded.support_shift == 1
    np.testing.assert_allclose(loaded(episode, training=False).numpy(), got,
                               rtol=1e-6, atol=1e-6)
    # Training is unchanged: one pass, batch statistics, no views.
    np.testing.assert_array_equal(viewed(episode, training=True).numpy(),
                                  plain(episode, training=True).numpy())


def test_bad_inputs_are_refused_with_what_was_given(episodes, make_mlp):
    with pytest.raises(ValueError, match="distance"):
        keras_meta.ProtoNet(make_mlp(), distance="manhattan")
    with pytest.raises(ValueError, match="support_shift=1 moves images; the "
                       r"embedding takes inputs of shape \(None, \d+\)"):
        keras_meta.ProtoNet(make_mlp(), support_shift=1)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="`support_shift` must be an "
                           f"int >= 0; got {bad!r}"):
            keras_meta.ProtoNet(image_embedding(), support_shift=bad)
    with pytest.raises(ValueError, match="keras.Model"):
        keras_meta.ProtoNet(lambda x: x)
    protonet = keras_meta.ProtoNet(make_mlp())
    episode = episodes(tasks=2)
    with pytest.raises(ValueError, match="compile"):
        protonet.fit(tf.data.Dataset.from_tensors(episode))
    protonet.compile()
    missing = dict(episode, support_y=np.zeros_like(episode["support_y"]))
    with pytest.raises(ValueError, match=r"no example of class\(es\) \[1, 2\]"):
        protonet.evaluate(tf.data.Dataset.from_tensors(missing), verbose=0)
    with pytest.raises(ValueError, match="0..N-1"):
        protonet.adapt(episode["support_x"][0], episode["support_y"][0] + 1)
    with pytest.raises(ValueError, match="without a task axis"):
        protonet.adapt(episode["support_x"], episode["support_y"])
    bad = dict(episode, query_x=np.full_like(episode["query_x"], np.nan))
    with pytest.raises(ValueError, match="non-finite"):
        protonet.predict(tf.data.Dataset.from_tensors(bad), verbose=0)


@pytest.mark.slow
@pytest.mark.parametrize("support_shift", [0, 2])
def test_saved_adapted_model_classifies_raw_pngs_like_the_pipeline(
        tmp_path, omniglot_dir, support_shift):
    with zipfile.ZipFile(os.path.join(omniglot_dir,
                                      "images_background_small1.zip")) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".png") and (
            "/Greek/character01/" in n or "/Greek/character02/" in n))
        pngs = [z.read(n) for n in names]
    for n, data in zip(names, pngs):
        path = tmp_path / "Greek" / n.split("/")[-2] / os.path.basename(n)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    cached = keras_meta.data.load_omniglot(str(tmp_path)).images
    raw = np.stack([tf.io.decode_png(p, channels=1).numpy() for p in pngs])
    keras.utils.set_random_seed(0)
    net = keras_meta.models.conv4_classifier(2, filters=8, strided=False)
    protonet = keras_meta.ProtoNet(
        keras.Model(net.inputs, net.get_layer("flatten").output),
        support_shift=support_shift)
    protonet.compile()
    labels = np.repeat([0, 1], 20)
    support = [0, 1, 20, 21]
    adapted = protonet.adapt(cached[support], labels[support])
    # Support views move the resized pixels: raw support images give the
    # prototypes the cache gives.
    from_raw = protonet.adapt(raw[support], labels[support])
    np.testing.assert_allclose(from_raw.get_layer("prototypes").get_weights(),
                               adapted.get_layer("prototypes").get_weights(),
                               rtol=1e-4, atol=1e-4)
    adapted.save(tmp_path / "adapted.keras")
    loaded = keras.models.load_model(tmp_path / "adapted.keras")
    from_cache = adapted.predict(cached, verbose=0)
    np.testing.assert_allclose(loaded.predict(raw, verbose=0), from_cache,
                               rtol=1e-4, atol=1e-4)


def test_export_classifies_from_the_support_set_without_keras_meta(tmp_path):
    protonet = keras_meta.ProtoNet(keras.Sequential([
        keras.Input((2,)), keras.layers.Dense(3, activation="tanh")]))
    episode = tiny_episode()
    sx, sy, qx = (episode["support_x"][0], episode["support_y"][0],
                  episode["query_x"][0])
    expected = protonet.adapt(sx, sy)(qx).numpy()
    path = str(tmp_path / "served")
    protonet.export(path, verbose=False)
    np.savez(tmp_path / "in.npz", sx=sx, sy=sy, qx=qx, expected=expected)
    script = (
        "import importlib.abc, sys\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'keras_meta':\n"
        "            raise ImportError('hidden')\n"
        "sys.meta_path.insert(0, Hide())\n"
        "import numpy as np, tensorflow as tf\n"
        f"x = np.load({str(tmp_path / 'in.npz')!r})\n"
        f"sig = tf.saved_model.load({path!r}).signatures\n"
        "out = sig['adapt_and_predict'](support_x=x['sx'], support_y=x['sy'],"
        " query_x=x['qx'])['output_0'].numpy()\n"
        "np.testing.assert_allclose(out, x['expected'], rtol=1e-5, "
        "atol=1e-6)\n"
        "assert sig['predict'](x=x['qx'])['output_0'].shape == (2, 3)\n"
        "print('served ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, cwd=str(tmp_path), timeout=300)
    assert "served ok" in done.stdout, done.stderr[-2000:]
    with pytest.raises(ValueError, match="tf_saved_model"):
        protonet.export(path, format="onnx")

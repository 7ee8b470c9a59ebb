"""keras_meta.callbacks.TensorBoard: grouped tags, read back from the
event files."""

import glob
import os

import numpy as np
import tensorflow as tf

import keras
import keras_meta
from keras_meta import callbacks


def scalars(directory):
    """`{tag: {step: value}}` of the scalars in a run directory."""
    out = {}
    for path in glob.glob(os.path.join(directory, "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "scalars":
                    continue
                out.setdefault(value.tag, {})[event.step] = float(
                    tf.make_ndarray(value.tensor))
    return out


def test_grouped_tag():
    assert callbacks.grouped_tag("loss") == "meta/loss"
    assert callbacks.grouped_tag("post_adapt_accuracy") == "meta/accuracy"
    assert callbacks.grouped_tag("pre_adapt_accuracy") == (
        "query/pre_adapt_accuracy")
    assert callbacks.grouped_tag("query_loss_after_step_3") == (
        "query/loss_after_step_3")
    assert callbacks.grouped_tag("consecutive_skipped_steps") == (
        "stability/consecutive_skipped_steps")
    assert callbacks.grouped_tag("loss", prefix="batch_") == "meta/batch_loss"
    assert callbacks.grouped_tag("rule/x") == "rule/x"
    mine = (("loss", "pretrain/loss"),) + callbacks.TAG_GROUPS
    assert callbacks.grouped_tag("loss", mine) == "pretrain/loss"


def test_maml_scalars_open_on_the_objective(tmp_path):
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((1,)), keras.layers.Dense(4),
                            keras.layers.Dense(1)])
    maml = keras_meta.MAML(net, inner_learning_rate=0.1)
    maml.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse",
                 metrics=[keras.metrics.MeanAbsoluteError(name="mae")],
                 jit_compile=False)
    data = keras_meta.data.sinusoid(shots=4, queries=5, meta_batch_size=2)
    history = maml.fit(data, steps_per_epoch=2, epochs=2, verbose=0,
                       validation_data=data, validation_steps=1,
                       callbacks=[callbacks.TensorBoard(str(tmp_path))])
    train = scalars(str(tmp_path / "train"))
    assert set(train) == {
        "meta/loss", "meta/mae", "optimizer/learning_rate",
        "query/post_adapt_loss", "query/pre_adapt_loss",
        "query/pre_adapt_mae", "stability/skipped_steps",
        "stability/consecutive_skipped_steps"}
    groups = sorted({tag.split("/")[0] for tag in train})
    assert groups == ["meta", "optimizer", "query", "stability"]
    np.testing.assert_allclose(
        [train["meta/loss"][e] for e in (0, 1)], history.history["loss"],
        rtol=1e-6)
    validation = scalars(str(tmp_path / "validation"))
    assert {"meta/loss", "meta/mae", "query/loss_after_step_1",
            "vs_iterations/meta/loss"} <= set(validation)
    np.testing.assert_allclose(validation["meta/mae"][1],
                               history.history["val_post_adapt_mae"][1], rtol=1e-6)
    assert not any(tag.startswith("epoch_") for tag in {**train,
                                                        **validation})


def test_a_learner_names_its_own_groups_per_batch(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.tensorboard_tag_groups = (("loss", "pretrain/loss"),)
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((8, 2), "float32")
    model.fit(x, x[:, :1], batch_size=4, epochs=1, verbose=0, callbacks=[
        callbacks.TensorBoard(str(tmp_path), update_freq="batch")])
    train = scalars(str(tmp_path / "train"))
    assert {"pretrain/loss", "pretrain/batch_loss"} <= set(train)
    assert sorted(train["pretrain/batch_loss"]) == [1, 2]

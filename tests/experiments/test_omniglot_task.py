"""The Omniglot task family of examples/train_maml.py (examples/maml/tasks.py)."""

import dataclasses
import types

import numpy as np

import keras_meta
from examples.maml import config as maml_config
from examples.maml import learners
from examples.maml import tasks
from examples.maml import train


def test_omniglot_task_through_tfds_uses_the_reference_split():
    """--task=omniglot without --data_dir: TFDS's omniglot (mocked here)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def as_dataset(self, split, *args, **kwargs):
        # 1,300 "characters" in train and 323 in test, two drawings each.
        offset, count = (0, 1300) if str(split).startswith("train") else (
            1300, 323)
        labels = np.repeat(np.arange(offset, offset + count), 2)
        images = np.full((len(labels), 105, 105, 3), 255, np.uint8)
        images[:, 0, 0, :] = (labels % 256)[:, None]
        return tf.data.Dataset.from_tensor_slices({
            "image": images, "label": labels.astype(np.int64),
            "alphabet": (labels // 40).astype(np.int64),
            "alphabet_char_id": np.zeros(len(labels), np.int64)})

    cfg = maml_config.resolve(maml_config.Config(task="omniglot"))
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        task = tasks.OmniglotTask(cfg)
    assert (task.train.num_classes, task.validation.num_classes,
            task.test.num_classes) == (1100, 100, 423)
    names = [set(t.class_names) for t in (task.train, task.validation,
                                           task.test)]
    assert not (names[0] & names[1] or names[0] & names[2]
                or names[1] & names[2])
    episode = next(iter(task.train_episodes()))
    assert episode["support_x"].shape == (32, 5, 28, 28, 1)


def test_maml_conv4_follows_strided_and_proto_maml_builds_on_it():
    """--strided picks MAML's conv4 too (unset: strided), and
    --variant=proto_maml wraps it in ProtoMAML."""
    for strided, pooled in ((None, False), (True, False), (False, True)):
        cfg = maml_config.resolve(maml_config.Config(
            task="omniglot", ways=5, filters=4, strided=strided,
            variant="proto_maml"))
        fake = types.SimpleNamespace(config=cfg)
        net = tasks.OmniglotTask.model(fake)
        assert ("pool0" in [layer.name for layer in net.layers]) == pooled
        task = types.SimpleNamespace(
            model=lambda: net, inner_learning_rate=lambda: 2.0,
            loss="sparse_categorical_crossentropy", metrics=("accuracy",))
        maml = train.build_maml(cfg, task)
        assert type(maml) is keras_meta.ProtoMAML
        # --support_shift is ProtoMAML's evaluation setting too.
        views = dataclasses.replace(cfg, support_shift=2)
        assert learners.apply_evaluation_settings(
            views, maml).support_shift == 2

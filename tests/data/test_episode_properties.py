"""Property-based tests (hypothesis) of episode sampling and validation over
shapes and ways/shots/queries."""

import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras
import keras_meta
from keras_meta.data import image_classes
from keras_meta.data.episode import validate_episode
from keras_meta.maml import checks as data_checks

# Bounded for CI: few examples, each a small TF computation.
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def numbered_classes(counts, size=4):
    """Class c holds counts[c] images; image i is filled with the value i,
    so an episode's pixels say which images it drew."""
    n = int(sum(counts))
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None],
                             (n, size, size, 1)).copy()
    labels = np.repeat(np.arange(len(counts)), counts).astype("int32")
    return image_classes.ImageClasses(
        images=images, labels=labels,
        class_names=[str(c) for c in range(len(counts))])


@st.composite
def episode_settings(draw):
    counts = draw(st.lists(st.integers(2, 9), min_size=2, max_size=7))
    ways = draw(st.integers(1, len(counts) + 2))
    shots = draw(st.integers(1, 6))
    queries = draw(st.integers(1, 6))
    batch = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    return counts, ways, shots, queries, batch, seed


@SETTINGS
@given(episode_settings())
def test_episodes_are_valid_or_refused_with_a_value_error(setting):
    counts, ways, shots, queries, batch, seed = setting
    classes = numbered_classes(counts)
    feasible = ways <= len(counts) and shots + queries <= min(counts)
    if not feasible:
        with pytest.raises(ValueError):
            keras_meta.data.episodes(classes, ways=ways, shots=shots,
                                     queries=queries, meta_batch_size=batch,
                                     seed=seed, image_size=None)
        return
    episode = next(iter(keras_meta.data.episodes(
        classes, ways=ways, shots=shots, queries=queries,
        meta_batch_size=batch, seed=seed, image_size=None)))
    episode = {k: v.numpy() for k, v in episode.items()}
    validate_episode(episode)
    assert episode["support_x"].shape == (batch, ways * shots, 4, 4, 1)
    assert episode["query_x"].shape == (batch, ways * queries, 4, 4, 1)
    owner = classes.labels  # image index -> class
    for task in range(batch):
        support_ids = episode["support_x"][task, :, 0, 0, 0].astype(int)
        query_ids = episode["query_x"][task, :, 0, 0, 0].astype(int)
        # Each label appears `shots` / `queries` times, once per image.
        for split, ids, per in (("support", support_ids, shots),
                                ("query", query_ids, queries)):
            labels = episode[f"{split}_y"][task]
            assert sorted(np.bincount(labels, minlength=ways)) == [per] * ways
            # All images of one label come from one source class...
            for label in range(ways):
                assert len(set(owner[ids[labels == label]])) == 1
        # ...the same class in support and query, distinct across labels,
        # and no image is in both sets.
        s_class = [owner[support_ids[episode["support_y"][task] == k][0]]
                   for k in range(ways)]
        q_class = [owner[query_ids[episode["query_y"][task] == k][0]]
                   for k in range(ways)]
        assert s_class == q_class and len(set(s_class)) == ways
        assert not set(support_ids) & set(query_ids)
        assert len(set(support_ids)) == ways * shots


@st.composite
def shapes(draw):
    tasks = draw(st.integers(1, 4))
    support, query = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    x_shape = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    y_shape = tuple(draw(st.lists(st.integers(1, 3), max_size=1)))
    return tasks, support, query, x_shape, y_shape


@SETTINGS
@given(shapes(), st.sampled_from(
    [None, "support_x", "support_y", "query_x", "query_y"]),
    st.integers(0, 3))
def test_validate_episode_accepts_consistent_and_refuses_broken_shapes(
        shape, broken, axis):
    tasks, support, query, x_shape, y_shape = shape
    episode = {
        "support_x": np.zeros((tasks, support) + x_shape, "float32"),
        "support_y": np.zeros((tasks, support) + y_shape, "float32"),
        "query_x": np.zeros((tasks, query) + x_shape, "float32"),
        "query_y": np.zeros((tasks, query) + y_shape, "float32"),
    }
    if broken is None:
        validate_episode(episode)
        return
    array = episode[broken]
    axis = axis % array.ndim
    grown = list(array.shape)
    grown[axis] += 1
    episode[broken] = np.zeros(grown, "float32")
    with pytest.raises(ValueError, match=f"'{broken}'"):
        validate_episode(episode)


@SETTINGS
@given(st.integers(2, 6), st.integers(1, 4),
       st.integers(-2, 8), st.integers(-2, 8))
def test_label_check_refuses_exactly_the_out_of_range_labels(
        ways, shots, low, high):
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(ways)])
    labels = np.tile(np.repeat(np.arange(ways), shots), (2, 1))
    labels[0, 0], labels[-1, -1] = low, high
    episode = {"support_x": np.zeros(labels.shape + (3,), "float32"),
               "support_y": labels.astype("int32")}
    episode["query_x"], episode["query_y"] = (episode["support_x"],
                                              episode["support_y"])
    in_range = 0 <= low < ways and 0 <= high < ways
    present = set(labels.reshape(-1))
    if in_range and max(present) == ways - 1:
        data_checks.check_episode(episode, net, "sparse")
    else:
        with pytest.raises(ValueError, match="labels must be in|-way"):
            data_checks.check_episode(episode, net, "sparse")

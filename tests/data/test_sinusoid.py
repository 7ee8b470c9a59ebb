"""The sinusoid episode source."""

import math

import numpy as np
import pytest

import keras_meta


def take(ds, n):
    return [{k: v.numpy() for k, v in e.items()} for e in ds.take(n)]


def test_structure_and_shapes():
    ds = keras_meta.data.sinusoid(shots=5, queries=7, meta_batch_size=3,
                                  seed=0)
    keras_meta.data.validate_episode(ds.element_spec)
    (e,) = take(ds, 1)
    assert e["support_x"].shape == (3, 5, 1)
    assert e["query_y"].shape == (3, 7, 1)
    assert all(v.dtype == np.float32 for v in e.values())


def test_seeded_streams_repeat_and_differ():
    a = take(keras_meta.data.sinusoid(seed=1), 3)
    b = take(keras_meta.data.sinusoid(seed=1), 3)
    c = take(keras_meta.data.sinusoid(seed=2), 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["query_y"], y["query_y"])
    assert not np.allclose(a[0]["query_y"], c[0]["query_y"])
    assert not np.allclose(a[0]["query_y"], a[1]["query_y"])


def test_tasks_follow_the_maml_family():
    (e,) = take(keras_meta.data.sinusoid(meta_batch_size=500, shots=20,
                                         queries=20, seed=3), 1)
    x = np.concatenate([e["support_x"], e["query_x"]], axis=1)[..., 0]
    y = np.concatenate([e["support_y"], e["query_y"]], axis=1)[..., 0]
    assert x.min() >= -5 and x.max() <= 5
    # Support and query come from one sinusoid: fit A sin(x) + B cos(x).
    amplitudes = []
    for xs, ys in zip(x, y):
        basis = np.stack([np.sin(xs), np.cos(xs)], axis=1)
        coef, residual, *_ = np.linalg.lstsq(basis, ys, rcond=None)
        assert np.abs(basis @ coef - ys).max() < 1e-4
        amplitudes.append(np.hypot(*coef))
        phase = math.atan2(-coef[1], coef[0])
        assert -1e-3 <= phase <= math.pi + 1e-3
    assert 0.1 - 1e-4 <= min(amplitudes) and max(amplitudes) <= 5 + 1e-4
    assert 2.0 < np.mean(amplitudes) < 3.1


@pytest.mark.parametrize("kwargs, message", [
    (dict(shots=0), "`shots` must be an int >= 1; got 0"),
    (dict(queries=2.5), "`queries` must be an int >= 1; got 2.5"),
    (dict(meta_batch_size=-1), "`meta_batch_size`"),
    (dict(seed="a"), "`seed` must be an int or None"),
    (dict(input_range=(5, -5)), "low <= high"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_meta.data.sinusoid(**kwargs)

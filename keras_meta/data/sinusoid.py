"""Sinusoid regression tasks, the toy family of the MAML paper."""

import math

import tensorflow as tf

from keras_meta import validation
from keras_meta.data.episode import seed_stream


def _check_range(name, value):
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be a pair (low, high); got {value!r}."
        ) from None
    if not low <= high:
        raise ValueError(f"`{name}` must have low <= high; got {value!r}.")
    return low, high


def sample_sinusoid_tasks(
    seed,
    meta_batch_size,
    num_points,
    amplitude_range=(0.1, 5.0),
    phase_range=(0.0, math.pi),
    input_range=(-5.0, 5.0),
):
    """Samples a batch of sinusoid tasks, stateless and deterministic.

    Args:
        seed: int32 tensor of shape [2], a stateless random seed.
        meta_batch_size: number of tasks.
        num_points: points per task.
        amplitude_range, phase_range, input_range: uniform ranges.

    Returns:
        `(x, y)`, each float32 of shape [meta_batch_size, num_points, 1].
    """
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    amplitude = tf.random.stateless_uniform(
        [meta_batch_size, 1, 1], seeds[0], *amplitude_range
    )
    phase = tf.random.stateless_uniform(
        [meta_batch_size, 1, 1], seeds[1], *phase_range
    )
    x = tf.random.stateless_uniform(
        [meta_batch_size, num_points, 1], seeds[2], *input_range
    )
    return x, amplitude * tf.sin(x - phase)


def sinusoid(
    shots=10,
    queries=10,
    meta_batch_size=25,
    seed=None,
    amplitude_range=(0.1, 5.0),
    phase_range=(0.0, math.pi),
    input_range=(-5.0, 5.0),
    skip_batches=0,
):
    """An endless dataset of sinusoid regression episodes.

    Each task is y = A sin(x - phase) with A ~ U[0.1, 5], phase ~ U[0, pi]
    and x ~ U[-5, 5] (Finn et al. 2017). Support and query points are drawn
    independently from the same task.

    Example:

    ```python
    maml.fit(keras_meta.data.sinusoid(shots=10, seed=0), steps_per_epoch=100)
    ```

    Args:
        shots: support points per task (K).
        queries: query points per task.
        meta_batch_size: tasks per batch.
        seed: int for a reproducible stream; None for a fresh one each time.
        amplitude_range, phase_range, input_range: (low, high) of the
            uniform distributions above.
        skip_batches: start the stream this many batches in (to resume a
            run exactly where it stopped).

    Returns:
        A `tf.data.Dataset` of episode dicts (see `keras_meta.data.episode`)
        of float32 tensors: `support_x`, `support_y` of shape
        [meta_batch_size, shots, 1]; `query_x`, `query_y` of shape
        [meta_batch_size, queries, 1].
    """
    for name, value in (
        ("shots", shots),
        ("queries", queries),
        ("meta_batch_size", meta_batch_size),
    ):
        validation.check_positive_int(name, value)
    ranges = dict(
        amplitude_range=_check_range("amplitude_range", amplitude_range),
        phase_range=_check_range("phase_range", phase_range),
        input_range=_check_range("input_range", input_range),
    )
    seeds = seed_stream(seed, skip_batches)

    def make_episode(batch_seed):
        x, y = sample_sinusoid_tasks(
            batch_seed, meta_batch_size, shots + queries, **ranges
        )
        return {
            "support_x": x[:, :shots],
            "support_y": y[:, :shots],
            "query_x": x[:, shots:],
            "query_y": y[:, shots:],
        }

    return seeds.map(
        make_episode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    ).prefetch(tf.data.AUTOTUNE)

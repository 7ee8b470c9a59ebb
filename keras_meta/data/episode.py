"""The episode structure that every keras_meta data source yields.

An episode batch is a dict of four tensors with a leading task axis:

    {
        "support_x": [tasks, support_size, *input_shape],
        "support_y": [tasks, support_size, *target_shape],
        "query_x":   [tasks, query_size, *input_shape],
        "query_y":   [tasks, query_size, *target_shape],
    }

`MAML.fit`, `MAML.evaluate` and `MAML.predict` consume it as it is. A single
task (as `MAML.adapt` takes it) is the same without the task axis.
"""

import tensorflow as tf

from keras_meta import validation

EPISODE_KEYS = ("support_x", "support_y", "query_x", "query_y")


def seed_stream(seed, skip_batches=0):
    """One stateless int32 [2] seed per episode batch.

    `tf.data.Dataset.random(seed)` gives the stream, so batch i depends only
    on `seed` and i however the dataset is consumed; skipping happens here,
    before any episode is made, so resuming at batch i costs nothing.
    """
    if seed is not None and (isinstance(seed, bool)
                             or not isinstance(seed, int)):
        raise ValueError(f"`seed` must be an int or None; got {seed!r}.")
    validation.check_non_negative_int("skip_batches", skip_batches)
    seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
    seeds = seeds.skip(skip_batches)
    return seeds.map(lambda s: tf.cast(s % (2**31 - 1), tf.int32))


def _shape(value):
    return tuple(value.shape)


def validate_episode(episode, where="episode"):
    """Checks an episode dict's keys and static shapes.

    Works on tensors, numpy arrays and `tf.TensorSpec`s (so a dataset's
    `element_spec` can be checked before anything is compiled). Unknown
    dimensions (None) are not compared.

    Args:
        episode: a dict with the keys in `EPISODE_KEYS`.
        where: a name for the episode in error messages.

    Raises:
        ValueError: the structure or the shapes disagree; the message says
            what was given and what was expected.
    """
    if not isinstance(episode, dict) or set(episode) != set(EPISODE_KEYS):
        given = sorted(episode) if isinstance(episode, dict) else type(episode)
        raise ValueError(
            f"{where} must be a dict with keys {list(EPISODE_KEYS)} "
            f"(see keras_meta.data.episode); got {given}."
        )
    shapes = {key: _shape(episode[key]) for key in EPISODE_KEYS}
    for key, shape in shapes.items():
        if len(shape) < 2:
            raise ValueError(
                f"{where}['{key}'] must have shape [tasks, examples, ...]; "
                f"got shape {shape}."
            )

    def agree(a, b):
        return len(a) == len(b) and all(
            x is None or y is None or x == y for x, y in zip(a, b)
        )

    checks = [
        ("support_x", "support_y", lambda s: s[:2], "[tasks, support_size]"),
        ("query_x", "query_y", lambda s: s[:2], "[tasks, query_size]"),
        ("support_x", "query_x", lambda s: (s[0],) + s[2:],
         "the task axis and the input shape"),
        ("support_y", "query_y", lambda s: (s[0],) + s[2:],
         "the task axis and the target shape"),
    ]
    for a, b, part, what in checks:
        if not agree(part(shapes[a]), part(shapes[b])):
            raise ValueError(
                f"{where}: '{a}' and '{b}' must agree in {what}; got shapes "
                f"{shapes[a]} and {shapes[b]}."
            )
    for a, b in (("support_x", "query_x"), ("support_y", "query_y")):
        da, db = (getattr(episode[k].dtype, "name", episode[k].dtype)
                  for k in (a, b))
        if da != db:
            raise ValueError(
                f"{where}: '{a}' and '{b}' must have the same dtype; got "
                f"{da} and {db}."
            )

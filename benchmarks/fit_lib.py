"""Training a Keras model with `fit` on random-teacher data (no flags).

Shared by `benchmarks/keras_fit.py` (held-out models) and
`benchmarks/validate_checkpoints.py --setting=fit` (training families).
"""

import functools

import keras
import numpy as np
import tensorflow as tf

from keras_meta.meta import problems

from benchmarks.suite import runner

MODELS = {
    # Held out from meta-training (benchmarks/keras_fit.py).
    "mlp_relu": functools.partial(problems.mlp_model, activation="relu"),
    "mlp_wide": functools.partial(problems.mlp_model, hidden=(100, 100)),
    "conv": problems.conv_model,
    # The architectures of meta-training families (validation only).
    "mlp_sigmoid": problems.mlp_model,
    "conv_small": functools.partial(problems.conv_model, filters=(4, 8)),
}


def learned_optimizer_factory(spec):
    """() -> a fresh LearnedOptimizer, from a spec as
    `benchmarks.lopt_suite --weights` takes ("default":
    `LearnedOptimizer()`)."""
    return functools.partial(runner.make_optimizer, runner.learned_spec(spec))


def dataset(seed, n, num_test=0):
    """`n` examples of a new random teacher (784-32-10 tanh) per seed.

    Returns `(x, y)`; with `num_test > 0`, `((x, y), (x_test, y_test))`,
    the test examples fresh draws of the same teacher (drawn after the
    training ones, which stay those of `num_test=0`).
    """
    data = problems.TeacherData()
    rng = np.random.default_rng(seed)
    task = data.sample_task(rng)
    x, y = data.sample_batches(task, 1, n, rng)
    if not num_test:
        return x[0], y[0]
    x_test, y_test = data.sample_batches(task, 1, num_test, rng)
    return (x[0], y[0]), (x_test[0], y_test[0])


def train(model_name, make_opt, seed, x, y, steps=500, batch_size=128,
          loss=None, test_data=None):
    """Trains `steps` steps with `fit`; returns the final training loss,
    or with `test_data` `(training loss, test loss)`.

    Args:
        model_name: a key of `MODELS`, or a callable that builds the model.
        loss: the compiled loss; default sparse categorical cross-entropy
            on logits.
        test_data: None, or held-out `(x, y)` evaluated at the end too.

    A loss is `evaluate` on the whole set; NaN if any weight is not finite
    at the end.
    """
    keras.utils.set_random_seed(seed)
    build = model_name if callable(model_name) else MODELS[model_name]
    model = build()
    model.compile(optimizer=make_opt(),
                  loss=loss or keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    ds = (tf.data.Dataset.from_tensor_slices((x, y))
          .shuffle(len(x), seed=seed).repeat().batch(batch_size))
    epochs = 10
    model.fit(ds, epochs=epochs, steps_per_epoch=steps // epochs, verbose=0)
    # All weights, so that batch-norm statistics count too.
    finite = all(np.all(np.isfinite(v.numpy())) for v in model.weights)
    losses = [float(model.evaluate(*split, batch_size=1024, verbose=0))
              if finite else float("nan")
              for split in [(x, y)] + ([test_data] if test_data else [])]
    return tuple(losses) if test_data else losses[0]

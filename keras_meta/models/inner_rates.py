"""MAML++'s multi-step loss weights (the inner-rate kinds moved to
`keras_meta.maml.inner_rules.rates`; `validate_rate_kind` is re-exported
here for `models/maml.py` until MAML moves to `keras_meta.maml`)."""

import keras

from keras_meta.maml.inner_rules.rates import validate_rate_kind  # noqa: F401


def multi_step_loss_weights(num_steps, progress):
    """MAML++ importance of the query loss after each inner step.

    Starts uniform over the steps and anneals linearly towards the last
    step alone as `progress` goes from 0 to 1 (Antoniou et al. 2019, MSL).

    Args:
        num_steps: number of inner steps S.
        progress: scalar tensor in [0, 1], the fraction of annealing done.

    Returns:
        A float32 tensor of shape [S] that sums to 1.
    """
    ops = keras.ops
    progress = ops.clip(ops.cast(progress, "float32"), 0.0, 1.0)
    early = (1.0 - progress) / num_steps
    last = 1.0 - (num_steps - 1) * early
    return ops.concatenate(
        [ops.full((num_steps - 1,), 1.0) * early, ops.reshape(last, (1,))]
    )

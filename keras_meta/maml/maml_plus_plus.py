"""MAML++: learned per-layer-per-step inner rates, a multi-step loss,
per-step batch norm, derivative-order annealing and a cosine-annealed meta
learning rate."""

import math
import numbers

import keras

from keras_meta import validation
from keras_meta.maml import batch_norm
from keras_meta.maml.model import MAML
from keras_meta.maml.multi_step_loss import multi_step_loss_weights  # noqa: F401


def cosine_annealed(optimizer, decay_steps, alpha=0.0):
    """`optimizer` with its constant learning rate `lr` replaced by
    `keras.optimizers.schedules.CosineDecay(lr, decay_steps, alpha)`:

        lr(t) = lr * (alpha + (1 - alpha) * (1 + cos(pi * min(t, T) / T)) / 2)

    at meta-step `t = optimizer.iterations`, `T = decay_steps`, so it falls
    from `lr` to `alpha * lr` and stays there (MAML++'s cosine annealing,
    per meta-step). An optimizer whose learning rate is already a schedule
    is returned unchanged (so a loaded model keeps its own).

    Args:
        optimizer: a Keras optimizer or identifier ("adam").
        decay_steps: int >= 1, the meta-steps of the decay.
        alpha: the final learning rate as a fraction of the initial.

    Returns:
        A Keras optimizer (a new one when the rate was replaced).
    """
    optimizer = keras.optimizers.get(optimizer)
    config = optimizer.get_config()
    rate = config.get("learning_rate")
    if not isinstance(rate, numbers.Real):
        return optimizer
    config["learning_rate"] = keras.optimizers.schedules.CosineDecay(
        float(rate), decay_steps, alpha=alpha)
    return type(optimizer).from_config(config)


def _check_options(first_order_steps, cosine_decay_steps, cosine_decay_alpha):
    if first_order_steps is not None and (
            isinstance(first_order_steps, bool)
            or not isinstance(first_order_steps, int)
            or first_order_steps < 0):
        raise ValueError("`first_order_steps` must be None or an int >= 0; "
                         f"got {first_order_steps!r}.")
    validation.check_positive_int("cosine_decay_steps", cosine_decay_steps,
                                  allow_none=True)
    if not (isinstance(cosine_decay_alpha, numbers.Real)
            and math.isfinite(cosine_decay_alpha)
            and 0.0 <= cosine_decay_alpha <= 1.0):
        raise ValueError("`cosine_decay_alpha` must be a number in [0, 1]; "
                         f"got {cosine_decay_alpha!r}.")


@keras.saving.register_keras_serializable(package="keras_meta")
class MAMLPlusPlus(MAML):
    """MAML with the MAML++ fixes (Antoniou et al., 2019).

    Always: each adapted variable gets one learned inner rate per inner
    step (LSLR), and the meta-loss weighs the query loss after every inner
    step, annealed towards the last step (MSL, `multi_step_loss_weights`).
    As options (off by default, so files saved before them load as they
    were):

    - `per_step_bn_statistics` (BNRS) and `per_step_bn_weights` (BNWB):
      every `BatchNormalization` layer gets its own moving statistics and
      its own gamma and beta per inner step
      (`keras_meta.maml.batch_norm.StepBatchNorm`). The per-step weights are
      meta-learned, not adapted in the inner loop. No effect on a model
      without batch norm.
    - `first_order_steps=N` (derivative-order annealing): meta-steps
      0..N-1 (by `optimizer.iterations`) are first order, the rest second
      order. One compiled step holds both (a `tf.cond`), so the switch
      happens exactly at step N, also after a resume.
    - `cosine_decay_steps=T` (cosine annealing of the meta learning rate):
      `compile` replaces the meta-optimizer's constant rate `lr` by
      `keras.optimizers.schedules.CosineDecay(lr, T, cosine_decay_alpha)`
      (`cosine_annealed`), saved with the optimizer.

    Example:

    ```python
    maml = keras_meta.MAMLPlusPlus(
        conv_net, inner_learning_rate=0.1, inner_steps=5,
        per_step_bn_statistics=True, per_step_bn_weights=True,
        first_order_steps=5000, cosine_decay_steps=50000,
        cosine_decay_alpha=0.01)
    maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    ```

    Args:
        model: a built Keras model.
        per_step_bn_statistics: bool, per-step batch-norm statistics.
        per_step_bn_weights: bool, per-step batch-norm gamma and beta.
        first_order_steps: None or int >= 0, first-order meta-steps before
            second order (ignored with `first_order=True`, always first).
        cosine_decay_steps: None or int >= 1, meta-steps of the cosine
            decay of the meta learning rate.
        cosine_decay_alpha: float in [0, 1], the final meta learning rate
            as a fraction of the initial.
        **kwargs: other `keras_meta.MAML` arguments.

    Reference:
        - [Antoniou et al., 2019](https://arxiv.org/abs/1810.09502)
    """

    def __init__(
        self,
        model,
        inner_optimizer="lslr",
        multi_step_loss=True,
        per_step_bn_statistics=False,
        per_step_bn_weights=False,
        first_order_steps=None,
        cosine_decay_steps=None,
        cosine_decay_alpha=0.0,
        **kwargs,
    ):
        _check_options(first_order_steps, cosine_decay_steps,
                       cosine_decay_alpha)
        # Read by `_build_state`, which MAML's constructor calls.
        self._step_options = (bool(per_step_bn_statistics),
                              bool(per_step_bn_weights))
        super().__init__(
            model,
            inner_optimizer=inner_optimizer,
            multi_step_loss=multi_step_loss,
            **kwargs,
        )
        self.per_step_bn_statistics, self.per_step_bn_weights = (
            self._step_options)
        self.first_order_steps = first_order_steps
        self.cosine_decay_steps = cosine_decay_steps
        self.cosine_decay_alpha = float(cosine_decay_alpha)

    def _build_state(self):
        statistics, weights = self._step_options
        plan = batch_norm.StepBatchNorm(self.model, self.inner_steps,
                                        statistics, weights)
        if plan:
            # The per-step weights replace the layers' own in every pass;
            # the inner loop does not adapt either.
            self._adapted_indices = [i for i in self._adapted_indices
                                     if i not in plan.weight_indices]
        super()._build_state()
        if plan:
            plan.build(self, self.model)
            self._step_batch_norm = plan

    def _second_order(self):
        if self.first_order or self.first_order_steps is None:
            return not self.first_order
        return self.optimizer.iterations >= self.first_order_steps

    def compile(self, optimizer="adam", **kwargs):
        """`MAML.compile`; with `cosine_decay_steps`, the optimizer's
        constant learning rate becomes a cosine decay (`cosine_annealed`)."""
        if self.cosine_decay_steps:
            optimizer = cosine_annealed(optimizer, self.cosine_decay_steps,
                                        self.cosine_decay_alpha)
        super().compile(optimizer=optimizer, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({
            "per_step_bn_statistics": self.per_step_bn_statistics,
            "per_step_bn_weights": self.per_step_bn_weights,
            "first_order_steps": self.first_order_steps,
            "cosine_decay_steps": self.cosine_decay_steps,
            "cosine_decay_alpha": self.cosine_decay_alpha,
        })
        return config

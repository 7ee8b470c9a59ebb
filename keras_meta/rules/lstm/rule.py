"""`apply` (one step of any variant) and `LSTMRule`, the rule under the
`keras_meta.rules.UpdateRule` contract."""

import tensorflow as tf

from keras_meta.rules.base import UpdateRule
from keras_meta.rules.lstm import params
from keras_meta.rules.lstm.config import RuleConfig
from keras_meta.rules.lstm.coordinate import apply_coordinate
from keras_meta.rules.lstm.tensor import apply_tensor


def _apply_one(phi, grad, state, config, feature_grad=None):
    if config.granularity == "tensor":
        return apply_tensor(phi, grad, state, config, feature_grad)
    return apply_coordinate(phi, grad, state, config, feature_grad)


def apply(phi, grads, state, config=RuleConfig(), feature_grads=None):
    """One step of the update rule.

    Args:
        phi: dict of meta-parameter tensors (see `phi_shapes`).
        grads: a gradient tensor, or a list/tuple of them.
        state: the matching state dict (from `init_state` or a previous
            call), or a list/tuple of them.
        config: the `RuleConfig` phi was made for.
        feature_grads: optional, like `grads`: the values the LSTM's
            features and the moments are computed from, where they should
            differ from `grads` in how they are differentiated (e.g.
            `tf.stop_gradient(grads)`: no second derivatives through the
            LSTM's inputs, as Ravi and Larochelle (2017) do, while the
            nominal `"sgd"` direction keeps them). Defaults to `grads`.

    Returns:
        `(updates, new_state)` with the structure of `(grads, state)`;
        updates are to be *added* to the parameters.
    """
    if isinstance(grads, (list, tuple)):
        if len(grads) != len(state):
            raise ValueError(
                f"Got {len(grads)} gradients but {len(state)} states."
            )
        if feature_grads is None:
            feature_grads = [None] * len(grads)
        results = [
            _apply_one(phi, g, s, config, f)
            for g, s, f in zip(grads, state, feature_grads)
        ]
        return [r[0] for r in results], [r[1] for r in results]
    return _apply_one(phi, grads, state, config, feature_grads)


class LSTMRule(UpdateRule):
    """The LSTM update rule of `config` as an `UpdateRule`.

    `meta_params` is phi, the dict of meta-parameter tensors
    (`phi_shapes(config)`); the state is a list of per-tensor state dicts
    (`init_state`). `step` is not used: the state counts steps itself.

    Args:
        config: the `RuleConfig`.
        feature_gradients: differentiate through the LSTM's inputs (its
            view of the gradient). False stops those gradients (the
            features and moments see `tf.stop_gradient(grads)`) while the
            nominal direction keeps them.
    """

    def __init__(self, config=RuleConfig(), feature_gradients=True):
        self.config = config
        self.feature_gradients = bool(feature_gradients)

    def init(self, values):
        return [params.init_state(v, self.config) for v in values]

    def state_shapes(self, shape):
        """`{key: shape}` of one tensor's state (`params.state_shapes`)."""
        return params.state_shapes(shape, self.config)

    def update(self, meta_params, grads, state, values, step):
        del values, step
        grads = list(grads)
        features = None if self.feature_gradients else [
            tf.stop_gradient(g) for g in grads]
        return apply(meta_params, grads, state, self.config, features)

"""Hand-designed optimizers as `UpdateRule`s, for unrolled comparisons.

SGD (plain, heavy ball, Nesterov), RMSProp and Adam with Keras's update
formulas, plus `Learned`: the LSTM rule with fixed phi. Each takes
`meta_params=()` and ignores `step`, so `keras_meta.meta.trainer.run_rule`
evaluates them all the same way.
"""

import math

import tensorflow as tf

from keras_meta.rules.base import UpdateRule
from keras_meta.rules.lstm import LSTMRule


class SGD(UpdateRule):
    """SGD, with optional (Nesterov) momentum; the state is the velocity."""

    def __init__(self, lr, momentum=0.0, nesterov=False):
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.name = "nag" if nesterov else ("momentum" if momentum else "sgd")

    def init(self, values):
        return [tf.zeros_like(p) for p in values]

    def update(self, meta_params, grads, state, values, step):
        ups, new = [], []
        for g, v in zip(grads, state):
            v = self.momentum * v - self.lr * g
            up = self.momentum * v - self.lr * g if self.nesterov else v
            ups.append(up)
            new.append(v)
        return ups, new


class RMSProp(UpdateRule):
    """RMSProp as Keras computes it; the state is the mean square."""

    name = "rmsprop"

    def __init__(self, lr, rho=0.9, epsilon=1e-7):
        self.lr, self.rho, self.epsilon = lr, rho, epsilon

    def init(self, values):
        return [tf.zeros_like(p) for p in values]

    def update(self, meta_params, grads, state, values, step):
        ups, new = [], []
        for g, s in zip(grads, state):
            s = self.rho * s + (1 - self.rho) * tf.square(g)
            ups.append(-self.lr * g / tf.sqrt(s + self.epsilon))  # as Keras
            new.append(s)
        return ups, new


class Adam(UpdateRule):
    """Adam; the state is `(m, v, t)` per tensor."""

    name = "adam"

    def __init__(self, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        self.lr, self.b1, self.b2, self.epsilon = lr, beta_1, beta_2, epsilon

    def init(self, values):
        return [(tf.zeros_like(p), tf.zeros_like(p), tf.zeros((), p.dtype))
                for p in values]

    def update(self, meta_params, grads, state, values, step):
        ups, new = [], []
        for g, (m, v, t) in zip(grads, state):
            t = t + 1.0
            m = self.b1 * m + (1 - self.b1) * g
            v = self.b2 * v + (1 - self.b2) * tf.square(g)
            m_hat = m / (1 - tf.exp(t * math.log(self.b1)))
            v_hat = v / (1 - tf.exp(t * math.log(self.b2)))
            ups.append(-self.lr * m_hat / (tf.sqrt(v_hat) + self.epsilon))
            new.append((m, v, t))
        return ups, new


class Learned(LSTMRule):
    """The LSTM rule with fixed phi: `meta_params` is ignored.

    Args:
        phi: dict of arrays (`keras_meta.rules.lstm.phi_shapes(config)`).
        config: the `RuleConfig`.
    """

    name = "learned"

    def __init__(self, phi, config):
        super().__init__(config)
        self.phi = {k: tf.convert_to_tensor(v) for k, v in phi.items()}

    def update(self, meta_params, grads, state, values, step):
        phi = {k: tf.cast(v, grads[0].dtype) for k, v in self.phi.items()}
        return super().update(phi, grads, state, values, step)


def make_baseline(name, lr, momentum=0.9):
    """`sgd`, `nag` (momentum 0.9), `heavy_ball` (momentum `momentum`),
    `rmsprop` or `adam` with learning rate lr."""
    if name == "sgd":
        return SGD(lr)
    if name == "heavy_ball":
        return SGD(lr, momentum=momentum)
    if name == "nag":
        return SGD(lr, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return RMSProp(lr)
    if name == "adam":
        return Adam(lr)
    raise ValueError(f"Unknown baseline {name!r}")

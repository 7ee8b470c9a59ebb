"""Hand-designed optimizers as pure functions, for unrolled comparisons.

Each is an `UpdateRule` with the same interface as the learned rule,
`init_state(tensor)` and `apply(grads, state) -> (updates, new_state)` on
lists, so `keras_meta.meta.trainer.run_rule` evaluates them all the same way.
"""

import math

import tensorflow as tf

from keras_meta.optimizers import lstm_rule


class UpdateRule:
    """A functional optimizer over lists of tensors."""

    name = "rule"

    def init_state(self, params):
        raise NotImplementedError

    def apply(self, grads, state):
        raise NotImplementedError


class SGD(UpdateRule):
    def __init__(self, lr, momentum=0.0, nesterov=False):
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.name = "nag" if nesterov else ("momentum" if momentum else "sgd")

    def init_state(self, params):
        return [tf.zeros_like(p) for p in params]

    def apply(self, grads, state):
        ups, new = [], []
        for g, v in zip(grads, state):
            v = self.momentum * v - self.lr * g
            up = self.momentum * v - self.lr * g if self.nesterov else v
            ups.append(up)
            new.append(v)
        return ups, new


class RMSProp(UpdateRule):
    name = "rmsprop"

    def __init__(self, lr, rho=0.9, epsilon=1e-7):
        self.lr, self.rho, self.epsilon = lr, rho, epsilon

    def init_state(self, params):
        return [tf.zeros_like(p) for p in params]

    def apply(self, grads, state):
        ups, new = [], []
        for g, s in zip(grads, state):
            s = self.rho * s + (1 - self.rho) * tf.square(g)
            ups.append(-self.lr * g / tf.sqrt(s + self.epsilon))  # as Keras
            new.append(s)
        return ups, new


class Adam(UpdateRule):
    name = "adam"

    def __init__(self, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        self.lr, self.b1, self.b2, self.epsilon = lr, beta_1, beta_2, epsilon

    def init_state(self, params):
        return [(tf.zeros_like(p), tf.zeros_like(p), tf.zeros((), p.dtype))
                for p in params]

    def apply(self, grads, state):
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


class Learned(UpdateRule):
    """The LSTM rule with fixed phi, as an `UpdateRule`."""

    name = "learned"

    def __init__(self, phi, config):
        self.phi = {k: tf.convert_to_tensor(v) for k, v in phi.items()}
        self.config = config

    def init_state(self, params):
        return [lstm_rule.init_state(p, self.config) for p in params]

    def apply(self, grads, state):
        phi = {k: tf.cast(v, grads[0].dtype) for k, v in self.phi.items()}
        return lstm_rule.apply(phi, grads, state, self.config)


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

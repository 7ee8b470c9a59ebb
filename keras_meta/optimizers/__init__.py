"""Learned optimizers: the functional LSTM rule and its Keras optimizer."""

from keras_meta.optimizers import lstm_rule  # noqa: F401
from keras_meta.optimizers import weights_io  # noqa: F401
from keras_meta.optimizers.learned_optimizer import LearnedOptimizer  # noqa: F401

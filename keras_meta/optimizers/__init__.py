"""Learned optimizers as Keras optimizers, and their meta-trained weights."""

from keras_meta.optimizers import weights_io  # noqa: F401
from keras_meta.optimizers.learned_optimizer import LearnedOptimizer  # noqa: F401

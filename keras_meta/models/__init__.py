"""Architectures, and (until they move) MAML's inner update rules."""

from keras_meta.models.conv4 import conv4_classifier
from keras_meta.models.inner_lstm import InnerLSTM
from keras_meta.models.inner_optimizer import InnerOptimizer
from keras_meta.models.inner_sgd import InnerSGD

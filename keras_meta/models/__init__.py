"""Architectures for meta-learning examples and tests."""

from keras_meta.models.conv4 import conv4_classifier  # noqa: F401

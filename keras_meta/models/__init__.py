"""MAML and its variants as Keras models."""

from keras_meta.models.anil import ANIL
from keras_meta.maml.inner_rules import InnerLSTM
from keras_meta.maml.inner_rules import InnerOptimizer
from keras_meta.maml.inner_rules import InnerSGD
from keras_meta.models.maml import MAML
from keras_meta.models.maml_plus_plus import MAMLPlusPlus
from keras_meta.models.meta_sgd import MetaSGD
from keras_meta.models.conv4 import conv4_classifier

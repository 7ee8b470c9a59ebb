"""Few-shot learners beside MAML, on the same episodes and evaluation:
Prototypical Networks, Reptile and a fine-tuning baseline."""

from keras_meta.learners.finetune import FineTune
from keras_meta.learners.protonet import PrototypeHead
from keras_meta.learners.protonet import ProtoNet
from keras_meta.learners.reptile import Reptile

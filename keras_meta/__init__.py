"""keras_meta: meta-learning for Keras 3 on TensorFlow.

Two pillars:
  * `keras_meta.MAML` and its variants (first-order, Meta-SGD, MAML++, ANIL,
    Proto-MAML):
    a `keras.Model` that meta-learns an initialization by differentiating
    through an inner loop of gradient steps; beside it, on the same
    episodes and evaluation, `keras_meta.ProtoNet`, `keras_meta.Reptile`
    and the fine-tuning baseline `keras_meta.FineTune`.
  * `keras_meta.LearnedOptimizer`: a coordinatewise LSTM update rule as a
    `keras.optimizers.Optimizer`, meta-trained by unrolled optimization.
"""

from keras_meta.backend import ensure_tensorflow_backend

ensure_tensorflow_backend()

from keras_meta.version import __version__  # noqa: E402,F401

from keras_meta import data  # noqa: E402
from keras_meta import distribute  # noqa: E402
from keras_meta import models  # noqa: E402
from keras_meta.maml import ANIL  # noqa: E402
from keras_meta.maml import MAML  # noqa: E402
from keras_meta.maml import MAMLPlusPlus  # noqa: E402
from keras_meta.maml import MetaSGD  # noqa: E402
from keras_meta.maml import ProtoMAML  # noqa: E402
from keras_meta.optimizers import LearnedOptimizer  # noqa: E402
from keras_meta.learners import ProtoNet  # noqa: E402
from keras_meta.learners import Reptile  # noqa: E402
from keras_meta.learners import FineTune  # noqa: E402

"""Meta-training of the learned optimizer: problems, baselines, trainer."""

from keras_meta.meta import baselines  # noqa: F401
from keras_meta.meta import problems  # noqa: F401
from keras_meta.meta import trainer  # noqa: F401
from keras_meta.meta.trainer import MetaTrainer  # noqa: F401

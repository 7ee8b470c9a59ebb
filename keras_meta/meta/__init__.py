"""Meta-training of the learned optimizer: problems, the truncated step,
its gradient estimator (truncated backpropagation), the outer learner
(`MetaTrainer`) and the evaluation of rules (`rollout.run_rule`)."""

from keras_meta.meta import problems  # noqa: F401
from keras_meta.meta import trainer  # noqa: F401
from keras_meta.meta.trainer import MetaTrainer  # noqa: F401

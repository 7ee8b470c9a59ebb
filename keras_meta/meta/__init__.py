"""Meta-training of the learned optimizer: problems, the truncated step,
its gradient estimators (truncated backpropagation, `tbptt`; persistent
evolution strategies, `pes`), a task distribution that generalizes
(`task_family`), the outer learner (`MetaTrainer`) and the evaluation of
rules (`rollout.run_rule`)."""

from keras_meta.meta import pes  # noqa: F401
from keras_meta.meta import problems  # noqa: F401
from keras_meta.meta import task_family  # noqa: F401
from keras_meta.meta import trainer  # noqa: F401
from keras_meta.meta.trainer import MetaTrainer  # noqa: F401

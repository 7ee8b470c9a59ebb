"""The classic baselines at their earlier path (`keras_meta.meta.baselines`).

They live in `keras_meta.rules.baselines`, as `keras_meta.rules.UpdateRule`s
(`init(values)`, `update(meta_params, grads, state, values, step)`).
"""

from keras_meta.rules.baselines import SGD  # noqa: F401
from keras_meta.rules.baselines import Adam  # noqa: F401
from keras_meta.rules.baselines import Learned  # noqa: F401
from keras_meta.rules.baselines import RMSProp  # noqa: F401
from keras_meta.rules.baselines import make_baseline  # noqa: F401

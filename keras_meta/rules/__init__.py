"""Update rules: one functional contract shared by every optimizer.

`UpdateRule` (`init(values) -> state`, `update(meta_params, grads, state,
values, step) -> (updates, state)`) is implemented by MAML's inner rules
(`keras_meta.maml.inner_rules`), the classic baselines (`baselines`), the
LSTM rule (`lstm.LSTMRule`, split by variant in `lstm/`) and, through it,
`LearnedOptimizer`; `inner_loop.unroll` applies any of them to a loss for
a number of steps.
"""

from keras_meta.rules.base import UpdateRule  # noqa: F401
from keras_meta.rules.inner_loop import unroll  # noqa: F401

"""The LSTM update rule's functional API at its documented path.

The rule lives in `keras_meta.rules.lstm` (split by variant); this module
keeps `keras_meta.optimizers.lstm_rule.apply(phi, grads, state, config)`
and its companions importable where the README and earlier code name them.
"""

from keras_meta.rules.lstm import DESCENTS  # noqa: F401
from keras_meta.rules.lstm import GRANULARITIES  # noqa: F401
from keras_meta.rules.lstm import MOMENTUM_PROBE_STEP  # noqa: F401
from keras_meta.rules.lstm import NUM_TENSOR_FEATURES  # noqa: F401
from keras_meta.rules.lstm import LSTMRule  # noqa: F401
from keras_meta.rules.lstm import RuleConfig  # noqa: F401
from keras_meta.rules.lstm import apply  # noqa: F401
from keras_meta.rules.lstm import init_phi  # noqa: F401
from keras_meta.rules.lstm import init_state  # noqa: F401
from keras_meta.rules.lstm import phi_shapes  # noqa: F401
from keras_meta.rules.lstm import preprocess  # noqa: F401
from keras_meta.rules.lstm import state_keys  # noqa: F401
from keras_meta.rules.lstm import state_shapes  # noqa: F401
from keras_meta.rules.lstm import tensor_features  # noqa: F401

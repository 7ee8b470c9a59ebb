"""The coordinatewise LSTM update rule, as pure differentiable functions.

The single functional core of keras_meta's learned optimizer (Andrychowicz
et al., 2016, "Learning to learn by gradient descent by gradient descent"):

    updates, new_state = apply(phi, grads, state, config)

* `phi` is a flat `dict` of tensors (the meta-parameters: LSTM kernels and
  biases, the output layer, a log learning rate). It holds nothing per
  coordinate, so the same phi drives every tensor of every model.
* `state` is per tensor (`init_state`, `state_shapes`): LSTM hidden and
  cell states, Adam's moments, a step count, and what a variant adds.
* `updates` has the gradient's shape and is *added* to the parameter.

`LSTMRule` is the same rule under the `keras_meta.rules.UpdateRule`
contract (meta_params = phi); `keras_meta.LearnedOptimizer`, the
meta-trainer in `keras_meta.meta`, the learned-rule baseline and MAML's
`InnerLSTM` all run it.

Modules: `config` (`RuleConfig`), `params` (phi and state shapes and
initial values), `cell` (the stacked LSTM), `features` (preprocessing,
moments, per-tensor statistics), then one module per variant:
`coordinate` (`descent` "adam", "none", "sgd"), `momentum` (the secant
heavy ball) and `tensor` (`granularity="tensor"`).

The default rule (`descent="adam"`):

    features  = [preprocess(g) (2 values), m_hat / (sqrt(v_hat) + eps),
                 clip(g / (sqrt(v_hat) + eps), -5, 5)]
    h         = LSTM_2(LSTM_1(features))            # 2 layers x 20, shared
    d, s      = W_out h + b_out                     # two outputs per coord.
    update    = -exp(log_lr) * exp(out_scale * s) * (m_hat / (sqrt(v_hat)+eps)
                                                      + out_scale * d)

Preprocessing (paper, appendix A) with p = 10:

    preprocess(x) = (log|x| / p, sign x)   if |x| >= exp(-p)
                    (-1, exp(p) x)         otherwise
"""

from keras_meta.rules.lstm.config import DESCENTS  # noqa: F401
from keras_meta.rules.lstm.config import GRANULARITIES  # noqa: F401
from keras_meta.rules.lstm.config import MOMENTUM_PROBE_STEP  # noqa: F401
from keras_meta.rules.lstm.config import NUM_TENSOR_FEATURES  # noqa: F401
from keras_meta.rules.lstm.config import RuleConfig  # noqa: F401
from keras_meta.rules.lstm.features import preprocess  # noqa: F401
from keras_meta.rules.lstm.features import tensor_features  # noqa: F401
from keras_meta.rules.lstm.params import init_phi  # noqa: F401
from keras_meta.rules.lstm.params import init_state  # noqa: F401
from keras_meta.rules.lstm.params import phi_shapes  # noqa: F401
from keras_meta.rules.lstm.params import state_keys  # noqa: F401
from keras_meta.rules.lstm.params import state_shapes  # noqa: F401
from keras_meta.rules.lstm.rule import LSTMRule  # noqa: F401
from keras_meta.rules.lstm.rule import apply  # noqa: F401

"""The normalized MLP update rule (Celo2-style), as pure functions.

A small MLP, shared by every parameter of every tensor, reads scale-free
Adam-like features of each parameter (the gradient and momenta at several
decays over `sqrt(v_hat)`, the parameter over its tensor's RMS) and
training-progress features (`tanh(t / tau)`, no known horizon needed); its
output is added to Adam's direction, the sum is RMS-normalized per tensor
at every step and scaled by a bounded per-tensor step size whose log is a
learned base rate plus a learned function of the progress features (a
schedule). With the zero output layer and schedule of `init_meta_params`
it is Adam's direction, normalized per tensor.

    updates, new_state = NormalizedMLPRule(config).update(
        meta_params, grads, state, values, step)

Modules: `config` (`NormalizedConfig`), `params` (meta-parameter and state
shapes and initial values), `rule` (`apply_one`, `NormalizedMLPRule`).

References: Moudgil, Knyazev and Belilovsky, "Celo2" (arXiv 2602.19142);
Harrison et al., 2022, "A Closer Look at Learned Optimization" (Adam-like
preconditioning as an inductive bias).
"""

from keras_meta.rules.normalized.config import RULE_TYPE  # noqa: F401
from keras_meta.rules.normalized.config import NormalizedConfig  # noqa: F401
from keras_meta.rules.normalized.params import drop_parameter_feature  # noqa: F401,E501
from keras_meta.rules.normalized.params import gate_parameter_feature  # noqa: F401,E501
from keras_meta.rules.normalized.params import init_meta_params  # noqa: F401
from keras_meta.rules.normalized.params import init_state  # noqa: F401
from keras_meta.rules.normalized.params import meta_param_shapes  # noqa: F401
from keras_meta.rules.normalized.params import scale_parameter_feature  # noqa: F401,E501
from keras_meta.rules.normalized.params import state_keys  # noqa: F401
from keras_meta.rules.normalized.params import state_shapes  # noqa: F401
from keras_meta.rules.normalized.rule import NormalizedMLPRule  # noqa: F401
from keras_meta.rules.normalized.rule import apply_one  # noqa: F401
from keras_meta.rules.normalized.rule import step_size  # noqa: F401

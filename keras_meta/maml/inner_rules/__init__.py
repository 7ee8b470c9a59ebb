"""MAML's inner update rules: `InnerOptimizer` (the
`keras_meta.rules.UpdateRule` contract plus `build`, which creates the
rule's meta-parameters as MAML weights), `InnerSGD` (fixed rate, Meta-SGD,
MAML++ LSLR; rate kinds in `rates`) and `InnerLSTM`; `get` resolves
`MAML(inner_optimizer=...)`."""

import keras

from keras_meta.maml.inner_rules.base import InnerOptimizer
from keras_meta.maml.inner_rules.lstm import InnerLSTM
from keras_meta.maml.inner_rules.sgd import InnerSGD

NAMES = ("sgd", "meta_sgd", "lslr", "lstm")
# The learned rates of each `InnerSGD` name.
_SGD_RATES = {"sgd": None, "meta_sgd": "per_parameter", "lslr": "per_step"}


def get(identifier):
    """Resolves `MAML(inner_optimizer=...)` to an `InnerOptimizer`.

    Args:
        identifier: one of `NAMES` ("sgd": plain SGD at a fixed rate;
            "meta_sgd": a learned rate per parameter; "lslr": a learned
            rate per adapted variable per step, MAML++; "lstm": the
            coordinatewise LSTM rule of `LearnedOptimizer`), an
            `InnerOptimizer` instance, or a config dict of a serialized one.

    Returns:
        An `InnerOptimizer`.
    """
    if isinstance(identifier, InnerOptimizer):
        return identifier
    if isinstance(identifier, dict):
        rule = keras.saving.deserialize_keras_object(identifier)
        if isinstance(rule, InnerOptimizer):
            return rule
    if isinstance(identifier, str) and identifier in NAMES:
        if identifier == "lstm":
            return InnerLSTM()
        return InnerSGD(learned_rates=_SGD_RATES[identifier])
    raise ValueError(
        f"`inner_optimizer` must be one of {NAMES} or a "
        "keras_meta.maml.InnerOptimizer instance; got "
        f"{type(identifier).__name__}: {identifier!r}."
    )

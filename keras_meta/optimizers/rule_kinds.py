"""The kinds of update rule a learned-optimizer weights file can hold.

A weights file's config (and `LearnedOptimizer`'s `rule` argument) is a
dict of a rule config's fields, plus `"rule_type"` naming the kind of rule
(`"lstm"` when absent, so every file written before other kinds existed
still reads as an LSTM file) and optionally `"provenance"` (how the file
was made: command, commit, seed, validation numbers), which no rule reads.
Each kind has a config class (`from_dict`, `to_dict`), the shapes and
initial values of its meta-parameters, and an `UpdateRule` that offers
`init`, `update` and `state_shapes`.
"""

import collections

from keras_meta.rules import lstm
from keras_meta.rules import normalized

RULE_TYPE_KEY = "rule_type"
PROVENANCE_KEY = "provenance"
LSTM = "lstm"
NORMALIZED = normalized.RULE_TYPE

Kind = collections.namedtuple(
    "Kind", ["config_class", "shapes", "init", "make_rule"])

KINDS = {
    LSTM: Kind(lstm.RuleConfig, lstm.phi_shapes, lstm.init_phi,
               lambda config, weight_decay: lstm.LSTMRule(config)),
    NORMALIZED: Kind(normalized.NormalizedConfig,
                     normalized.meta_param_shapes,
                     normalized.init_meta_params,
                     normalized.NormalizedMLPRule),
}


def kind_of(config):
    """The `rule_type` of a config object."""
    for name, kind in KINDS.items():
        if isinstance(config, kind.config_class):
            return name
    raise TypeError(f"Not a learned-optimizer rule config: {config!r}.")


def config_from_dict(d):
    """The config object a config dict names (`rule_type`, default LSTM;
    `provenance` is ignored)."""
    d = dict(d)
    d.pop(PROVENANCE_KEY, None)
    rule_type = d.pop(RULE_TYPE_KEY, LSTM)
    if rule_type not in KINDS:
        raise ValueError(
            f"Unknown learned-optimizer rule_type {rule_type!r}; expected one "
            f"of {sorted(KINDS)}.")
    return KINDS[rule_type].config_class.from_dict(d)


def config_to_dict(config, provenance=None):
    """The config dict of `config`: an LSTM config's fields alone (as files
    have always held them), any other kind's with its `rule_type`; with
    `provenance` (a JSON-serializable dict) when given."""
    d = config.to_dict()
    rule_type = kind_of(config)
    if rule_type != LSTM:
        d[RULE_TYPE_KEY] = rule_type
    if provenance is not None:
        d[PROVENANCE_KEY] = dict(provenance)
    return d


def meta_param_shapes(config):
    """`{name: shape}` of the meta-parameters of `config`'s rule."""
    return KINDS[kind_of(config)].shapes(config)


def init_meta_params(config, seed=0):
    """Initial meta-parameters of `config`'s rule (numpy float32)."""
    return KINDS[kind_of(config)].init(config, seed=seed)


def make_rule(config, weight_decay=0.0):
    """The `UpdateRule` of `config`; `weight_decay` is the decoupled decay
    of rules that apply it themselves (not the LSTM's)."""
    return KINDS[kind_of(config)].make_rule(config, weight_decay)


def decays_in_rule(config):
    """Whether `config`'s rule applies weight decay itself, scaled by its
    own step size (AdamW's meaning), instead of Keras's generic decay."""
    return kind_of(config) != LSTM


def check_per_tensor(config, built):
    """Raises where an LSTM rule's `step_sizes()` cannot be read: a
    coordinatewise rule (step sizes per coordinate), or before `build`."""
    if getattr(config, "granularity", None) != "tensor":
        raise ValueError(
            "step_sizes() needs a per-tensor rule (the default, "
            "weights='normalized' or weights='per_tensor'); this "
            f"optimizer's rule is granularity={config.granularity!r}, "
            "whose step sizes are per coordinate.")
    if not built:
        raise ValueError("step_sizes(): the optimizer is not built yet; "
                         "call it after the first training step.")

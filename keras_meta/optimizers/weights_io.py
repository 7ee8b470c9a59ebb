"""Reading and writing learned-optimizer meta-parameters (`.npz` files).

A phi file is a NumPy `.npz` archive holding one array per
meta-parameter of its rule plus `__config__`, a JSON string with the rule's
config (`rule_kinds`: the config's fields, `rule_type` unless the rule is
the LSTM, and optionally `provenance`, how the file was made).
"""

import dataclasses
import functools
import json
import os

import numpy as np

from keras_meta import saving
from keras_meta.optimizers import rule_kinds
from keras_meta.rules import lstm
from keras_meta.rules import normalized

CONFIG_KEY = "__config__"
PRETRAINED_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "pretrained")
# Shipped meta-trained weights, by the name `LearnedOptimizer(weights=...)`
# takes. BUILD_NOTES.md says how each file was made.
PRETRAINED = {
    # One LSTM state per tensor steering Adam's step size (the default until
    # 0.4.0); its hypergradient looks about 100 steps back
    # (hyper_horizon=100).
    "per_tensor": "per_tensor_lstm_phi.npz",
    # The same meta-parameters with the one-step hypergradient
    # (hyper_horizon=1): the default until 2026-12-01, kept so that models
    # saved with it load, and for comparison.
    "per_tensor_one_step": "per_tensor_one_step_lstm_phi.npz",
    # The paper's coordinatewise 2 x 20 LSTM modulating Adam per coordinate.
    "coordinatewise": "lstm_phi.npz",
    # A coordinatewise LSTM modulating heavy-ball momentum whose rate follows
    # a secant estimate of the curvature (descent="momentum"), meta-trained
    # on the paper's quadratic family only (the paper trains one optimizer
    # per problem family).
    "quadratic": "quadratic_lstm_phi.npz",
    # The normalized MLP rule (antisymmetric, Adam's per-coordinate scale),
    # meta-trained by persistent ES for held-out validation loss on small
    # Omniglot tasks; meant with `use_ema=True`.
    "normalized": "normalized_mlp_phi.npz",
}
# `LearnedOptimizer()`: these shipped weights with `DEFAULT_RULE`'s
# untrained fields read over their config (and `use_ema=True`), the
# configuration that won on held-out test loss (BUILD_NOTES 4.6).
DEFAULT_PRETRAINED = "normalized"
DEFAULT_RULE = {"dense_table_decay": False}
# `weights=` names of untrained rules: "init" (the `rule` given, else the
# LSTM) and the normalized MLP rule (Adam's direction normalized per tensor).
INIT = "init"
INIT_NORMALIZED = "init_normalized"


def pretrained_path(name=DEFAULT_PRETRAINED):
    """Path of the shipped weights `name` (a key of `PRETRAINED`)."""
    if name not in PRETRAINED:
        raise ValueError(
            f"Unknown pretrained learned-optimizer weights {name!r}; the "
            f"package ships {sorted(PRETRAINED)}."
        )
    return os.path.join(PRETRAINED_DIR, PRETRAINED[name])


@functools.lru_cache(maxsize=1)
def _shipped_configs():
    """{name: config} of the shipped files (read once: they are package
    data)."""
    return {name: load_phi(pretrained_path(name))[1] for name in PRETRAINED
            if os.path.exists(pretrained_path(name))}


def is_default_rule(config):
    """Whether `config` is the default weights' rule, up to untrained
    fields (what `LearnedOptimizer()` averages by default)."""
    return pretrained_for_rule(config) == DEFAULT_PRETRAINED


def pretrained_for_rule(config):
    """Name of the shipped weights trained for `config`, or None: the file
    whose config is `config`, else one whose config differs from it only
    in untrained fields (the config class's `UNTRAINED_FIELDS`)."""
    configs = _shipped_configs()
    for name, file_cfg in configs.items():
        if file_cfg == config:
            return name
    for name, file_cfg in configs.items():
        if _same_trained_fields(config, file_cfg):
            return name
    return None


def _same_trained_fields(config, file_cfg):
    """Whether `config` is `file_cfg` but for the fields a file is not
    trained for (the config class's `UNTRAINED_FIELDS`)."""
    free = getattr(type(file_cfg), "UNTRAINED_FIELDS", ())
    return type(config) is type(file_cfg) and dataclasses.replace(
        config, **{f: getattr(file_cfg, f) for f in free}) == file_cfg


def save_phi(path, phi, config, provenance=None):
    """Writes `phi` (dict of arrays or tensors) and `config` to `path`.

    `provenance`: optional JSON-serializable dict stored in the file's
    config (e.g. command, commit, seed, validation numbers);
    `load_provenance` reads it back.
    """
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in phi.items()}
    validate_phi(arrays, config, source=path)
    arrays[CONFIG_KEY] = np.array(json.dumps(
        rule_kinds.config_to_dict(config, provenance)))

    def write(temporary):
        with open(temporary, "wb") as f:
            np.savez(f, **arrays)

    # Atomic: a run killed mid-write leaves the previous file intact.
    saving.replace_atomically(path, write)


def validate_phi(phi, config, source="phi"):
    """Raises ValueError unless `phi` has exactly the arrays `config` needs."""
    expected = rule_kinds.meta_param_shapes(config)
    missing = sorted(set(expected) - set(phi))
    extra = sorted(set(phi) - set(expected))
    if missing or extra:
        raise ValueError(
            f"Learned-optimizer weights from {source} do not match the rule "
            f"{config}: missing arrays {missing}, unexpected arrays {extra}. "
            f"Expected exactly {sorted(expected)}."
        )
    for key, shape in expected.items():
        got = tuple(np.shape(phi[key]))
        if got != tuple(shape):
            raise ValueError(
                f"Learned-optimizer weights from {source}: array {key!r} has "
                f"shape {got}, expected {tuple(shape)} for rule {config}."
            )
        if not np.all(np.isfinite(np.asarray(phi[key], dtype=np.float64))):
            raise ValueError(
                f"Learned-optimizer weights from {source}: array {key!r} "
                "contains NaN or infinity."
            )


def load_phi(path):
    """Reads a phi file.

    Args:
        path: path of an `.npz` written by `save_phi`.

    Returns:
        `(phi, config)`: dict of float32 numpy arrays and its `RuleConfig`.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if the file is not a phi archive, or its arrays do not
            match its config.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Learned-optimizer weights file not found: {path!r}. Expected an "
            "`.npz` written by keras_meta.optimizers.weights_io.save_phi (or "
            "examples/train_learned_optimizer.py); pass weights=None for the "
            "shipped pretrained weights."
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.array(data[k]) for k in data.files}
    except Exception as e:  # zipfile.BadZipFile, OSError, ValueError, ...
        raise ValueError(
            f"Could not read learned-optimizer weights from {path!r}: it is "
            f"not a valid .npz archive ({type(e).__name__}: {e}). Expected an "
            "`.npz` with one array per meta-parameter and a '__config__' "
            "entry."
        ) from e
    if CONFIG_KEY not in arrays:
        hint = (" It looks like a meta-training checkpoint: turn it into a "
                "phi file with examples.learned_optimizer.train."
                "checkpoint_phis(run_dir)." if "__info__" in arrays else "")
        raise ValueError(
            f"Learned-optimizer weights file {path!r} has no '{CONFIG_KEY}' "
            f"entry (found {sorted(arrays)[:8]}). Expected an `.npz` written "
            f"by keras_meta.optimizers.weights_io.save_phi.{hint}"
        )
    try:
        config = rule_kinds.config_from_dict(
            json.loads(str(arrays.pop(CONFIG_KEY)))
        )
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"Learned-optimizer weights file {path!r} has a malformed "
            f"'{CONFIG_KEY}' entry: {e}"
        ) from e
    validate_phi(arrays, config, source=repr(path))
    return {k: v.astype(np.float32) for k, v in arrays.items()}, config


def load_provenance(path):
    """The `provenance` dict stored in the phi file `path` ({} if none)."""
    with np.load(os.fspath(path), allow_pickle=False) as data:
        config = json.loads(str(data[CONFIG_KEY]))
    return config.get(rule_kinds.PROVENANCE_KEY, {})


def _init(weights, rule_cfg, seed):
    """`(phi, config)` of the untrained rule `weights` names."""
    cfg = rule_cfg or lstm.RuleConfig()
    if weights == INIT_NORMALIZED and not isinstance(
            rule_cfg, normalized.NormalizedConfig):
        cfg = normalized.NormalizedConfig()
    return rule_kinds.init_meta_params(cfg, seed=seed), cfg


def _over_file_config(rule, file_cfg, path):
    """The config `rule` (a dict) names when read over `file_cfg`; raises
    where it changes a field the file was trained for."""
    merged = dict(rule_kinds.config_to_dict(file_cfg))
    merged.update(rule)
    config = rule_kinds.config_from_dict(merged)
    if not _same_trained_fields(config, file_cfg):
        free = getattr(type(file_cfg), "UNTRAINED_FIELDS", ())
        raise ValueError(
            f"LearnedOptimizer: rule={rule} was given but the weights file "
            f"{path!r} was trained for rule={file_cfg}; only the untrained "
            f"fields {list(free)} may differ.")
    return config


def resolve(weights, rule=None, seed=0):
    """The phi and `RuleConfig` that `LearnedOptimizer(weights, rule, seed)`
    names.

    Args:
        weights: None (the shipped default: `DEFAULT_PRETRAINED` with
            `DEFAULT_RULE` over its config; with `rule`, the shipped
            weights trained for it, or the default's with `rule`'s
            fields over its own), a key of `PRETRAINED`, a path to an
            `.npz`, a dict of arrays (then `rule` is required), `"init"` (`rule`'s rule,
            by default the LSTM's, drawn with `seed`) or `"init_normalized"`
            (the untrained normalized MLP rule: Adam's direction,
            normalized per tensor; `rule`'s config if it is one).
        rule: None or a config dict (`rule_kinds`: a config's fields, with
            `rule_type` for rules other than the LSTM). Given with a named
            file or a path, it is read over the file's config and may
            change only the fields the file was not trained for (the
            config class's `UNTRAINED_FIELDS`, e.g.
            `{"dense_table_decay": False}` for `"normalized"`); given
            with `weights=None`, it names a shipped file's config up to
            those fields, or is read over the default's rule
            (`DEFAULT_RULE` over `DEFAULT_PRETRAINED`'s config).
        seed: seed of `"init"` weights.

    Returns:
        `(phi, config)`: a dict of float32 arrays and its rule config.
    """
    if weights is None:
        weights = _shipped_name(rule)
        if weights == DEFAULT_PRETRAINED:
            # A partial rule is the default with those fields changed.
            rule = {**DEFAULT_RULE, **(rule or {})}
    if rule is not None and isinstance(weights, (str, os.PathLike)) \
            and weights not in (INIT, INIT_NORMALIZED):
        path = _weights_path(weights)
        phi, file_cfg = load_phi(path)
        return phi, _over_file_config(rule, file_cfg, path)
    rule_cfg = rule_kinds.config_from_dict(rule) if rule is not None else None
    if isinstance(weights, str) and weights in (INIT, INIT_NORMALIZED):
        return _init(weights, rule_cfg, seed)
    if isinstance(weights, dict):
        if rule_cfg is None:
            raise ValueError(
                "LearnedOptimizer(weights=<dict>) needs `rule` (a dict of "
                "RuleConfig fields) to check the arrays against."
            )
        phi = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        validate_phi(phi, rule_cfg, source="the weights dict")
        return phi, rule_cfg
    path = _weights_path(weights)
    phi, file_cfg = load_phi(path)
    if rule_cfg is not None and rule_cfg != file_cfg:
        raise ValueError(
            f"LearnedOptimizer: rule={rule_cfg} was given but the weights "
            f"file {path!r} was trained for rule={file_cfg}."
        )
    return phi, file_cfg


def _shipped_name(rule):
    """The shipped weights `weights=None` names with `rule`: the default,
    or the file whose config `rule` is (up to untrained fields; e.g. in
    `from_config` of a model saved with other shipped weights); a `rule`
    that names none is read over the default's config."""
    if rule is None:
        return DEFAULT_PRETRAINED
    try:
        name = pretrained_for_rule(rule_kinds.config_from_dict(rule))
    except ValueError:  # Some of the default's fields, without rule_type.
        name = None
    return name or DEFAULT_PRETRAINED


def _weights_path(weights):
    if isinstance(weights, str) and weights in PRETRAINED:
        return pretrained_path(weights)
    if isinstance(weights, (str, os.PathLike)):
        return os.fspath(weights)
    raise ValueError(
        "LearnedOptimizer `weights` must be None (shipped pretrained "
        f"weights), one of {sorted(PRETRAINED)}, a path to an .npz file, a "
        f"dict of arrays or 'init'; got {type(weights).__name__}: "
        f"{weights!r}."
    )

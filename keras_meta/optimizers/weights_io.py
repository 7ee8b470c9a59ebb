"""Reading and writing learned-optimizer meta-parameters (`.npz` files).

A phi file is a NumPy `.npz` archive holding one array per key of
`lstm_rule.phi_shapes(config)` plus `__config__`, a JSON string with the
`RuleConfig` the arrays were trained for.
"""

import json
import os

import numpy as np

from keras_meta import saving
from keras_meta.optimizers import lstm_rule

CONFIG_KEY = "__config__"
PRETRAINED_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "pretrained")
# Shipped meta-trained weights, by the name `LearnedOptimizer(weights=...)`
# takes. BUILD_NOTES.md says how each file was made.
PRETRAINED = {
    # One LSTM state per tensor steering Adam's step size (the default); its
    # hypergradient looks about 100 steps back (hyper_horizon=100).
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
}
DEFAULT_PRETRAINED = "per_tensor"


def pretrained_path(name=DEFAULT_PRETRAINED):
    """Path of the shipped weights `name` (a key of `PRETRAINED`)."""
    if name not in PRETRAINED:
        raise ValueError(
            f"Unknown pretrained learned-optimizer weights {name!r}; the "
            f"package ships {sorted(PRETRAINED)}."
        )
    return os.path.join(PRETRAINED_DIR, PRETRAINED[name])


def pretrained_for_rule(config):
    """Name of the shipped weights trained for `config`, or None."""
    for name in PRETRAINED:
        path = pretrained_path(name)
        if os.path.exists(path) and load_phi(path)[1] == config:
            return name
    return None


PRETRAINED_PATH = pretrained_path()


def save_phi(path, phi, config):
    """Writes `phi` (dict of arrays or tensors) and `config` to `path`."""
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in phi.items()}
    validate_phi(arrays, config, source=path)
    arrays[CONFIG_KEY] = np.array(json.dumps(config.to_dict()))

    def write(temporary):
        with open(temporary, "wb") as f:
            np.savez(f, **arrays)

    # Atomic: a run killed mid-write leaves the previous file intact.
    saving.replace_atomically(path, write)


def validate_phi(phi, config, source="phi"):
    """Raises ValueError unless `phi` has exactly the arrays `config` needs."""
    expected = lstm_rule.phi_shapes(config)
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
        raise ValueError(
            f"Learned-optimizer weights file {path!r} has no '{CONFIG_KEY}' "
            f"entry (found {sorted(arrays)}). Expected an `.npz` written by "
            "keras_meta.optimizers.weights_io.save_phi."
        )
    try:
        config = lstm_rule.RuleConfig.from_dict(
            json.loads(str(arrays.pop(CONFIG_KEY)))
        )
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"Learned-optimizer weights file {path!r} has a malformed "
            f"'{CONFIG_KEY}' entry: {e}"
        ) from e
    validate_phi(arrays, config, source=repr(path))
    return {k: v.astype(np.float32) for k, v in arrays.items()}, config

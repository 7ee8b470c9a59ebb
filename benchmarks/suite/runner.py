"""One `model.fit` run of a workload with one optimizer.

Only the public Keras API: `model.compile(optimizer=..., loss=...,
metrics=[...])`, `model.fit` on a shuffled, repeated `tf.data` pipeline of
the finite training set, `model.evaluate` on each split at the end.
"""

import dataclasses
import time

import keras
import numpy as np
import tensorflow as tf

import keras_meta
from keras_meta.callbacks import validation_control
from keras_meta.optimizers import rule_kinds
from keras_meta.optimizers import weights_io
from keras_meta.rules import normalized

# Steps run per call of the compiled train function (public `compile`
# argument); it divides every step count used here.
STEPS_PER_EXECUTION = 50
# Options that edit a trained rule (`_ablated`), not name its config: the
# untrained fields of `NormalizedConfig` and the MLP's diagnosis.
EDITS = ("ablate=", "mlp_scale=", "parameter_feature_scale=") + tuple(
    f"{field}=" for field in normalized.NormalizedConfig.UNTRAINED_FIELDS)


def _rule_option(option):
    """`{field: value}` of a rule option: "none" (`normalize="none"`) or
    "field=value" of the rule config (`a:b` for a pair)."""
    if option == "none":
        return {"normalize": "none"}
    field, sep, text = option.partition("=")
    if not sep:
        raise ValueError(f"Unknown option {option!r}; known: ema, "
                         "compact_ema, none, "
                         "and field=value of the rule config.")

    def parse(x):
        for kind in (int, float):
            try:
                return kind(x)
            except ValueError:
                pass
        return {"true": True, "false": False}.get(x.lower(), x)
    values = [parse(x) for x in text.split(":")]
    return {field: values[0] if len(values) == 1 else values}


def learned_spec(text):
    """The spec of a learned optimizer written "name+option+...": name a
    shipped weights name or file, "default" for `LearnedOptimizer()`
    (spec weights None), options as `make_optimizer` takes them."""
    name, *options = text.split("+")
    extra = (tuple(sorted(options)),) if options else ()
    return ("learned", None if name == "default" else name) + extra


def make_optimizer(spec, steps=None):
    """A fresh optimizer from a spec (for a run of `steps` steps).

    Specs: ("adam", lr), ("adam_ema", lr) (with `use_ema=True`),
    ("adam_ema", lr, "control") (the same under `ValidationControl`, see
    `fit`), ("adam_ema", lr, "control_default") (the callback's defaults),
    ("adamw", lr, weight_decay), ("learned", weights[, options]) where
    weights is None (the shipped default) or a name or file and options a
    tuple of "ema" (`use_ema=True`), "compact_ema" (`compact_ema=True`),
    "none" (the rule option
    `normalize="none"`) and "field=value" rule options (e.g.
    "hyper_rate=0.1", "hyper_offset_range=-2.3:2.3"), which apply to
    `"init_normalized"`'s config or must match a file's;
    "total_steps=run" gives the rule the run's length `steps`;
    "ema_window_fraction=F" is `LearnedOptimizer`'s argument.
    """
    kind = spec[0]
    if kind == "adam":
        return keras.optimizers.Adam(spec[1])
    if kind == "adam_ema":
        return keras.optimizers.Adam(spec[1], use_ema=True)
    if kind == "adamw":
        return keras.optimizers.AdamW(spec[1], weight_decay=spec[2])
    if kind == "learned":
        options = set(spec[2]) if len(spec) > 2 else set()
        if "total_steps=run" in options:
            if steps is None:
                raise ValueError("total_steps=run needs the run's steps.")
            options = options - {"total_steps=run"} | {
                f"total_steps={steps}"}
        # Without "ema", LearnedOptimizer's own default: averaging for
        # the default weights, not for named ones.
        kwargs = {"use_ema": True} if "ema" in options else {}
        if "compact_ema" in options:
            kwargs["compact_ema"] = True
        windows = {o for o in options if o.startswith("ema_window_fraction=")}
        for option in windows:
            kwargs.update(_rule_option(option))
        ablations = {o for o in options if o.startswith(EDITS)}
        rule = {}
        controls = {o for o in options if _is_control(o)}
        for option in sorted(options - {"ema", "compact_ema"} - controls
                             - ablations - windows):
            rule.update(_rule_option(option))
        if rule:
            kwargs["rule"] = {"rule_type": "normalized_mlp", **rule}
        if spec[1] is not None:
            kwargs["weights"] = spec[1]
        if ablations:
            kwargs.update(_ablated(kwargs.get("weights"), rule or None,
                                   sorted(ablations)))
        return keras_meta.LearnedOptimizer(**kwargs)
    raise ValueError(f"Unknown optimizer spec {spec!r}.")


def _ablated(weights, rule, ablations):
    """`{"weights": phi, "rule": config dict}` of a normalized rule with
    parts removed or changed: "ablate=parameter_feature" drops the MLP's
    parameter feature, "ablate=mlp" zeroes the MLP's output (Adam's
    direction at the rule's own step sizes), "mlp_scale=S" multiplies the
    MLP's output by S (between the rule and its ablation);
    "parameter_feature_scale=S" feeds it S times its parameter feature (the
    learned weight decay's strength); "field=value" sets an untrained
    config field (`NormalizedConfig.UNTRAINED_FIELDS`)."""
    phi, config = weights_io.resolve(weights, rule)
    if not isinstance(config, normalized.NormalizedConfig):
        raise ValueError(f"ablate= needs a normalized rule, got {config}.")
    for ablation in ablations:
        kind, _, part = ablation.partition("=")
        if kind == "mlp_scale":
            scale = _rule_option(ablation)["mlp_scale"]
            if not isinstance(scale, (int, float)) or not 0 <= scale <= 1:
                raise ValueError(f"{ablation!r}: the scale must be a number "
                                 "in [0, 1].")
            phi = _scale_mlp_output(phi, scale)
        elif kind == "parameter_feature_scale":
            phi = normalized.scale_parameter_feature(
                phi, config, _rule_option(ablation)[kind])
        elif kind in normalized.NormalizedConfig.UNTRAINED_FIELDS:
            config = dataclasses.replace(config, **_rule_option(ablation))
        elif part == "parameter_feature":
            phi, config = normalized.drop_parameter_feature(phi, config)
        elif part == "mlp":
            phi = _scale_mlp_output(phi, 0.0)
        else:
            raise ValueError(f"Unknown {ablation!r}; known: "
                             "ablate=parameter_feature, ablate=mlp, "
                             "mlp_scale=S.")
    return {"weights": phi, "rule": rule_kinds.config_to_dict(config)}


def _scale_mlp_output(phi, scale):
    """`phi` with the MLP's output layer (so its output) times `scale`."""
    return dict(phi, **{k: scale * np.asarray(phi[k])
                        for k in ("out/kernel", "out/bias")})


def _dataset(x, y, batch_size, seed):
    return (tf.data.Dataset.from_tensor_slices((x, y))
            .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            .repeat().batch(batch_size, drop_remainder=True))


# `ValidationControl` arguments of a "control" spec: its defaults but
# round 11's (the learned decay halved, a check every 250 steps, the final
# weights kept), so that the recorded runs' specs keep their meaning;
# "control_<argument>=value" options override them
# ("+control_decay_factor=0+control_every=auto+
# control_restore_best_weights=true" is the callback's default).
CONTROL_DEFAULTS = {"decay_factor": 0.5, "every": 250,
                    "restore_best_weights": False}


def controlled(spec):
    """Whether a spec trains under `ValidationControl` ("control" or
    "control_default" as an Adam spec's last part, or "control" among a
    learned spec's options, with `control_options`)."""
    if spec[0] == "learned":
        return len(spec) > 2 and any(_is_control(o) for o in spec[2])
    return spec[-1] in ("control", "control_default")


def control_arguments(spec):
    """`ValidationControl` keyword arguments of a `controlled` spec: none
    (the callback's defaults) for an Adam spec ending "control_default",
    else `CONTROL_DEFAULTS` updated by `control_options`."""
    if spec[-1] == "control_default":
        return {}
    return {**CONTROL_DEFAULTS, **control_options(spec)}


def _is_control(option):
    """"control" or a "control_<argument>=value" option."""
    return option.startswith("control")


def control_options(spec):
    """`{argument: value}` of a learned spec's "control_<argument>=value"
    options: `ValidationControl` arguments other than its defaults."""
    if spec[0] != "learned" or len(spec) < 3:
        return {}
    out = {}
    for option in spec[2]:
        if option.startswith("control_"):
            out.update(_rule_option(option[len("control_"):]))
    return out


def fit(workload, splits, spec, seed, steps):
    """Trains `steps` steps from seed `seed`; returns the final numbers.

    A `controlled` spec trains under `keras_meta.callbacks.
    ValidationControl` (`control_arguments`), reading
    the validation split and the first as many training examples (all
    where fewer).

    Returns a dict: "<split>_loss" and "<split>_<metric>" for train, val
    and test (None where the weights are not all finite at the end,
    batch-norm statistics included), "finite" and "seconds".
    """
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    model = workload.build()
    model.compile(optimizer=make_optimizer(spec, steps), loss=workload.loss,
                  metrics=[workload.metric],
                  steps_per_execution=min(STEPS_PER_EXECUTION, steps))
    x, y = splits.train
    callbacks = []
    if controlled(spec):
        size = len(splits.val[0])
        callbacks.append(validation_control.ValidationControl(
            splits.val, train_data=(x[:size], y[:size]),
            **control_arguments(spec)))
    model.fit(_dataset(x, y, workload.batch_size, seed), epochs=1,
              steps_per_epoch=steps, shuffle=False, verbose=0,
              callbacks=callbacks)
    finite = all(np.all(np.isfinite(v.numpy())) for v in model.weights)
    out = {"finite": bool(finite)}
    for name, (x, y) in splits.items():
        logs = (model.evaluate(x, y, batch_size=500, verbose=0,
                               return_dict=True) if finite else {})
        out[f"{name}_loss"] = _finite_or_none(logs.get("loss"))
        out[f"{name}_{workload.metric}"] = _finite_or_none(
            logs.get(workload.metric))
    out["finite"] = finite and out["test_loss"] is not None
    out["seconds"] = time.perf_counter() - start
    return out


def _finite_or_none(value):
    if value is None or not np.isfinite(value):
        return None
    return float(value)

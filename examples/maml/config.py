"""The settings of a MAML run: one `Config`, its flags, the task defaults.

Every field is a flag of examples/train_maml.py (`FLAG_SPECS`). Fields
left as None take the task's default (`resolve`): the MAML paper's
settings for sinusoid regression and for 5-way and 20-way Omniglot.
"""

import dataclasses

from absl import flags

from keras_meta import distribute
from keras_meta.data import image_classes
from keras_meta.data.few_shot import MAX_DISTORT

from examples import config_flags
from examples import flag_checks
from examples.config_flags import option
from examples.maml import learners

VARIANTS = ("maml", "meta_sgd", "maml_plus_plus", "anil", "proto_maml")
INNER_OPTIMIZERS = ("sgd", "meta_sgd", "lslr", "lstm")
# The inner rule each variant implies; `--inner_optimizer` may replace it
# for "maml", "anil" and "proto_maml" and must agree with it for the others.
VARIANT_INNER_OPTIMIZER = {"maml": "sgd", "meta_sgd": "meta_sgd",
                           "maml_plus_plus": "lslr", "anil": "sgd",
                           "proto_maml": "sgd"}
FREE_INNER_OPTIMIZER = ("maml", "anil", "proto_maml")
TASKS = ("sinusoid", "omniglot")
# Settings that `--resume` may change: they do not change what the
# checkpoints were trained with (the record of each change is kept in
# results.json). Every other difference is refused.
MAY_CHANGE_ON_RESUME = frozenset({
    "train_steps", "steps_per_epoch",
    "max_train_minutes", "verbose", "checkpoint_every", "keep_checkpoints",
    "profile", "profile_batches", "eval_tasks", "eval_shots", "eval_steps",
    "tpu", "evaluate_only", "support_shift", "transductive_steps"})
# Flags that are ints >= 1 once the task's defaults are filled in.
POSITIVE_INTS = ("ways", "shots", "queries", "meta_batch_size",
                 "train_steps", "steps_per_epoch", "inner_steps",
                 "eval_inner_steps", "steps_per_execution", "eval_tasks",
                 "eval_queries", "filters", "checkpoint_every",
                 "keep_checkpoints")
OFFLINE_TEST_ALPHABETS = image_classes.OMNIGLOT_HELD_OUT_ALPHABETS


@dataclasses.dataclass
class Config:
    """Settings of one run. None means "the task's default" (`resolve`)."""

    task: str = option("sinusoid", "Task family.", choices=TASKS)
    learner: str = option(
        "maml", "maml (the MAML family: --variant, --inner_optimizer), "
        "protonet (Prototypical Networks; Omniglot only), reptile, or "
        "finetune (pretrain a classifier or regressor on the training "
        "tasks, then fit a new head per task). Their defaults: "
        "examples/maml/learners.py.", choices=learners.LEARNERS)
    model_dir: str = option(
        "runs/maml", "Logs, checkpoints, model.keras and results.json.")
    variant: str = option(
        "maml", "maml, meta_sgd, maml_plus_plus (LSLR + multi-step loss), "
        "anil (adapt only the head) or proto_maml (every task's head starts "
        "at its prototypes; Omniglot only).", choices=VARIANTS)
    inner_optimizer: str | None = option(
        None, "Inner update rule: sgd (fixed rate), meta_sgd (learned "
        "rate per parameter), lslr (learned rate per layer per step) or "
        "lstm (learned coordinatewise LSTM). Unset: the one --variant "
        "implies (maml and anil: sgd; meta_sgd: meta_sgd; maml_plus_plus: "
        "lslr).", choices=INNER_OPTIMIZERS)
    ways: int = option(5, "Omniglot: classes per episode (N).")
    shots: int | None = option(None, "Support examples per class/task (K).")
    queries: int | None = option(
        None, "Query examples per class/task in training.")
    meta_batch_size: int | None = option(None, "Tasks per meta-step.")
    train_steps: int | None = option(None, "Meta-steps in all.")
    steps_per_epoch: int | None = option(
        None, "Meta-steps between logs and validation.")
    inner_steps: int | None = option(None, "Inner steps in meta-training.")
    eval_inner_steps: int | None = option(
        None, "Inner steps in validation and of the saved model's adapt "
        "and export. Unset on sinusoid: 10 for sgd, --inner_steps for the "
        "learned rules.")
    inner_lr: float | None = option(
        None, "Inner learning rate (Omniglot: in the reference's "
        "convention, loss summed over classes).")
    meta_lr: float | None = option(
        None, "Adam meta learning rate (default 1e-3); --learner=reptile: "
        "the outer step size (SGD's rate; default 1.0 on Omniglot, 0.1 on "
        "sinusoid).")
    first_order: bool = option(False, "Drop second derivatives (FOMAML).")
    zero_head: bool = option(
        False, "The zeroing trick (Kao et al., 2022): the head (the last "
        "layer with weights) stays at zero and every task adapts it from "
        "zero. MAML variants only.")
    multi_step_loss: str | None = option(
        None, "Meta-loss over inner steps: last, annealed (MAML++) or "
        "uniform (every count up to --inner_steps; learned rules). Unset: "
        "the variant's.", choices=("last", "annealed", "uniform"))
    step_weights: tuple[float, ...] | None = option(
        None, "The meta-loss as weights of the inner-step counts "
        "1..--inner_steps (one per count; replaces --multi_step_loss), "
        "e.g. 4,1,1,1,1: learned inner rules that hold at more steps.")
    inner_guard: float | None = option(
        None, "Per task, undo an inner step after which the support loss "
        "is above this factor times its value before adaptation (or not "
        "finite) and stop that task's adaptation (MAML's inner_guard); 0 "
        "turns it off. Unset: on sinusoid 2 for the learned rules "
        "(meta_sgd, lslr, lstm) and off for sgd; off on Omniglot.")
    meta_clipnorm: float | None = option(
        None, "Clip the meta-gradient's norm (Adam's clipnorm); advised "
        "for learned inner rules.")
    per_step_bn: bool = option(
        False, "--variant=maml_plus_plus: per-step batch-norm statistics "
        "and weights.")
    first_order_steps: int | None = option(
        None, "--variant=maml_plus_plus: first-order meta-gradients for "
        "the first N meta-steps, then second order.")
    cosine_decay_steps: int | None = option(
        None, "--variant=maml_plus_plus: cosine annealing of the meta "
        "learning rate over N meta-steps.")
    # Resolved to "auto" (XLA where it is known to help) for Omniglot.
    jit_compile: bool | None = option(None, "Compile the steps with XLA.")
    steps_per_execution: int | None = option(
        None, "Meta-steps per compiled call.")
    seed: int = option(0, "Random seed.")
    eval_tasks: int = option(
        1000, "New tasks (episodes) in the final evaluation.")
    eval_shots: tuple[int, ...] | None = option(
        None, "Support sizes K of the evaluation.")
    eval_steps: tuple[int, ...] | None = option(
        None, "Inner step counts of the evaluation.")
    eval_queries: int | None = option(
        None, "Query examples in evaluation.")
    data_dir: str | None = option(
        None, "Omniglot: a folder with the official zips (offline); "
        "unset: TFDS 'omniglot' (downloads once).")
    test_alphabets: tuple[str, ...] = option(
        OFFLINE_TEST_ALPHABETS,
        "Omniglot with --data_dir: held-out test alphabets.")
    filters: int = option(64, "Omniglot: conv4 filters.")
    checkpoint_every: int | None = option(
        None, "Meta-steps between checkpoints (rounded to whole epochs).")
    keep_checkpoints: int = option(3, "Checkpoints kept.")
    resume: bool = option(
        False, "Continue from the newest checkpoint in model_dir.")
    max_train_minutes: float | None = option(
        None, "Stop meta-training after this much wall time.")
    verbose: int = option(
        1, "Keras verbosity: 1 progress bar, 2 a line per epoch.")
    strategy: str = option(
        "default", "tf.distribute strategy: default (one device), mirrored "
        "(all local GPUs), multi_worker (the cluster in TF_CONFIG; only the "
        "chief writes model_dir) or tpu (see --tpu). The meta-batch is "
        "split across replicas.", choices=distribute.STRATEGIES)
    tpu: str | None = option(
        None, "With --strategy=tpu: the TPU's name or grpc:// address; "
        "'local' on a TPU VM.")
    distance: str = option(
        "euclidean", "--learner=protonet: squared euclidean or scaled "
        "cosine logits.", choices=("euclidean", "cosine"))
    support_shift: int | None = option(
        None, "--learner=protonet and --variant=proto_maml: outside "
        "training, each prototype is the mean embedding of its support "
        "image moved by every offset of up to this many pixels per axis "
        "(0: the image alone; queries are embedded once). An evaluation "
        "setting: --resume and --evaluate_only may change it. Unset: 3 "
        "(chosen on validation, BUILD_NOTES 4.3), 0 with --paper_settings "
        "and for other learners.")
    transductive_steps: int = option(
        0, "--learner=protonet: outside training, rounds of soft k-means "
        "that move the prototypes toward the episode's unlabeled queries "
        "(Ren et al. 2018; 0: the support set alone). Transductive: a "
        "query's logits depend on the queries it comes with. An evaluation "
        "setting, as --support_shift.")
    train_ways: int | None = option(
        None, "--learner=protonet: classes per training episode (more "
        "than --ways helps; default 30, 60 with --paper_settings).")
    train_shift: int | None = option(
        None, "Omniglot: move each training image by its own random offset "
        "of up to this many pixels per axis (0: none; validation and "
        "evaluation images never move). Episode learners only, not "
        "--learner=finetune. Unset: 3 for --learner=protonet (chosen on "
        "validation, BUILD_NOTES 4.3), 0 otherwise.")
    train_distort: float | None = option(
        None, "Omniglot: also rotate, shear and scale each training image "
        "about its centre by its own random affine map, within this many "
        "times Koch et al. (2015)'s ranges (+-10 degrees, shear +-0.3, "
        "scale 0.8-1.2 per axis; 0: none, at most 3). Episode learners "
        "only, not --learner=finetune. Unset: 0.")
    train_flips: bool | None = option(
        None, "Omniglot: mirror images as new training classes (each "
        "character and each of its rotations also mirrored left to "
        "right: 8 classes per character). Episode learners only, not "
        "--learner=finetune. Unset: True for --learner=protonet (chosen "
        "on validation, BUILD_NOTES 4.3), False otherwise.")
    strided: bool | None = option(
        None, "Omniglot: conv4 with strided convolutions (True) or 2x2 "
        "max-pooling (False); unset: the learner's default (protonet: "
        "max-pooling; MAML and the others: strided).")
    paper_settings: bool = option(
        False, "The paper's settings instead of the CPU-budget defaults: "
        "MAML on 20-way Omniglot 5 inner steps and 16 tasks per meta-step "
        "(CPU: 1 and 8, 3 steps in evaluation); other learners: "
        "examples/maml/learners.py.")
    evaluate_only: bool = option(
        False, "Train nothing: evaluate model_dir/model.keras of a finished "
        "run with this command's evaluation settings (--ways, --eval_*; "
        "other --ways only for ProtoNet and FineTune, whose networks do not "
        "fix it) and write model_dir/evaluation-<ways>way.json.")
    profile: bool = option(
        False, "Write a TensorBoard profile (Profile tab; needs "
        "tensorboard-plugin-profile to view) of a few training calls to "
        "model_dir/logs/train.")
    profile_batches: tuple[int, ...] = option(
        (3, 5), "With --profile: the first and last train-function call "
        "profiled (each call runs --steps_per_execution meta-steps).")


FLAG_SPECS = config_flags.specs(Config)

# Defaults per task. Sinusoid: the MAML paper. Omniglot 5-way: the paper's
# settings; 20-way: a CPU budget (1 inner step and 8 tasks per meta-step,
# 3 steps in evaluation), chosen on validation accuracy at equal wall time
# over the paper's 5 steps and 16 tasks (`OMNIGLOT_PAPER`, restored by
# --paper_settings; BUILD_NOTES 4.3). Both train with as many queries as
# shots, as the reference does; evaluation uses 15.
SINUSOID_DEFAULTS = dict(
    shots=10, queries=10, meta_batch_size=25, train_steps=70000,
    steps_per_epoch=1000, inner_steps=1, eval_inner_steps=10, inner_lr=0.01,
    jit_compile=True, steps_per_execution=100, eval_shots=(5, 10, 20),
    eval_steps=(1, 10), eval_queries=100, checkpoint_every=10000,
)
OMNIGLOT_DEFAULTS = {
    5: dict(shots=1, queries=1, meta_batch_size=32, train_steps=60000,
            steps_per_epoch=100, inner_steps=1, eval_inner_steps=3,
            inner_lr=0.4, jit_compile="auto", steps_per_execution=1,
            eval_shots=None, eval_steps=None, eval_queries=15,
            checkpoint_every=500),
    20: dict(shots=1, queries=1, meta_batch_size=8, train_steps=60000,
             steps_per_epoch=100, inner_steps=1, eval_inner_steps=3,
             inner_lr=0.1, jit_compile="auto", steps_per_execution=1,
             eval_shots=None, eval_steps=None, eval_queries=15,
             checkpoint_every=500),
}
# The MAML paper's Omniglot settings where the defaults differ from them.
OMNIGLOT_PAPER = {
    5: {},
    20: dict(meta_batch_size=16, inner_steps=5, eval_inner_steps=5),
}


# --inner_guard's "off"; a run recorded before the flag existed ran without
# a guard, so a resume compares its missing setting as this
# (`resume_defaults`).
INNER_GUARD_OFF = 0.0
# Defaults per inner rule on sinusoid, where they were measured (BUILD_NOTES
# 4.2). The learned rules get the per-task inner guard (MAML's inner_guard;
# without it a few tasks diverge at more steps than trained) and validate
# and adapt with the steps they were trained with (eval_inner_steps None:
# --inner_steps; with 1 training step, 10 steps are worse even guarded).
# Plain SGD: no guard (no task diverges; its results stay bitwise those of
# 4.1) and 10 steps. Omniglot: no guard unless asked for.
_LEARNED_RULE = dict(inner_guard=2.0, eval_inner_steps=None)
SINUSOID_RULE_DEFAULTS = {
    "sgd": dict(inner_guard=INNER_GUARD_OFF),
    "meta_sgd": _LEARNED_RULE,
    "lslr": _LEARNED_RULE,
    "lstm": _LEARNED_RULE,
}


def resume_defaults():
    """The settings a run's record may lack (added after it was written),
    as `run_dir.RunDirectory` compares them on resume: the flags' defaults,
    and no inner guard, shift, distortion, mirror images or support views
    (what such a run trained and evaluated with)."""
    return dict(config_flags.defaults(Config), inner_guard=INNER_GUARD_OFF,
                train_shift=0, train_distort=0.0, train_flips=False,
                support_shift=0, transductive_steps=0)


def task_defaults(task, ways, paper_settings=False):
    """The MAML defaults of `task` ("sinusoid" or "omniglot") with `ways`
    (Omniglot with `paper_settings`: the MAML paper's)."""
    if task == "sinusoid":
        return SINUSOID_DEFAULTS
    key = 20 if ways >= 20 else 5
    return dict(OMNIGLOT_DEFAULTS[key],
                **(OMNIGLOT_PAPER[key] if paper_settings else {}))


def _check(config):
    if config.task not in TASKS:
        raise ValueError(f"--task must be one of {TASKS}; got {config.task!r}.")
    if config.variant not in VARIANTS:
        raise ValueError(
            f"--variant must be one of {VARIANTS}; got {config.variant!r}.")
    implied = VARIANT_INNER_OPTIMIZER[config.variant]
    inner = config.inner_optimizer
    if inner is not None and inner not in INNER_OPTIMIZERS:
        raise ValueError(
            f"--inner_optimizer must be one of {INNER_OPTIMIZERS}; got "
            f"{inner!r}.")
    if (inner is not None and config.variant not in FREE_INNER_OPTIMIZER
            and inner != implied):
        raise ValueError(
            f"--variant={config.variant} implies --inner_optimizer={implied}"
            f"; got --inner_optimizer={inner}. Use --variant=maml with "
            "--inner_optimizer to swap the inner rule.")
    plus_plus = [name for name in ("per_step_bn", "first_order_steps",
                                   "cosine_decay_steps")
                 if getattr(config, name) not in (None, False)]
    if config.variant == "proto_maml" and config.task != "omniglot":
        raise ValueError(
            "--variant=proto_maml starts a classifier's head at the class "
            f"prototypes; it needs --task=omniglot, got --task={config.task}.")
    if config.variant == "proto_maml" and config.zero_head:
        raise ValueError(
            "--zero_head contradicts --variant=proto_maml, whose head starts "
            "at the prototypes, not at zero.")
    if plus_plus and config.variant != "maml_plus_plus":
        raise ValueError(
            f"--{plus_plus[0]} is a MAML++ option; it needs "
            f"--variant=maml_plus_plus, got --variant={config.variant}.")
    if config.step_weights is not None and (
            len(config.step_weights) != config.inner_steps):
        raise ValueError(
            f"--step_weights needs one weight per inner-step count (--inner_"
            f"steps={config.inner_steps}); got {len(config.step_weights)}.")
    if config.strategy not in distribute.STRATEGIES:
        raise ValueError(f"--strategy must be one of "
                         f"{distribute.STRATEGIES}; got {config.strategy!r}.")


def check_values(config):
    """Raises `ValueError` on a resolved setting that cannot work: a count
    that is not an int >= 1 (zero steps are refused, not replaced), a
    learning rate that is negative, NaN or inf, a time limit that is not
    > 0, an empty evaluation grid or a bad profile range."""
    for name in POSITIVE_INTS:
        flag_checks.positive_int(name, getattr(config, name))
    if config.task == "omniglot" and config.ways < 2:
        raise ValueError(
            f"--ways must be >= 2 for Omniglot (a 1-way task has nothing "
            f"to classify); got {config.ways}.")
    flag_checks.positive_ints("eval_shots", config.eval_shots)
    flag_checks.positive_ints("eval_steps", config.eval_steps)
    flag_checks.number("inner_lr", config.inner_lr)
    flag_checks.number("meta_lr", config.meta_lr)
    if config.inner_guard is not None:
        flag_checks.number("inner_guard", config.inner_guard, allow_inf=True)
    if config.meta_clipnorm is not None:
        flag_checks.number("meta_clipnorm", config.meta_clipnorm, strict=True)
    if config.max_train_minutes is not None:
        flag_checks.number("max_train_minutes", config.max_train_minutes,
                           strict=True, allow_inf=True)
    if config.profile:
        flag_checks.step_range("profile_batches", config.profile_batches)
    flag_checks.non_negative_int("seed", config.seed)
    flag_checks.non_negative_int("train_shift", config.train_shift)
    flag_checks.non_negative_int("support_shift", config.support_shift)
    flag_checks.non_negative_int("transductive_steps",
                                 config.transductive_steps)
    if config.train_shift and config.task != "omniglot":
        raise ValueError(
            f"--train_shift moves images; --task={config.task} has none "
            f"(got --train_shift={config.train_shift}).")
    if config.train_distort is not None:
        flag_checks.number("train_distort", config.train_distort)
        if config.train_distort > MAX_DISTORT:
            raise ValueError(
                f"--train_distort must be at most {MAX_DISTORT} (beyond, "
                "maps can be nearly singular); got "
                f"{config.train_distort!r}.")
        if config.train_distort and config.task != "omniglot":
            raise ValueError(
                f"--train_distort distorts images; --task={config.task} has "
                f"none (got --train_distort={config.train_distort}).")
    if config.train_flips and config.task != "omniglot":
        raise ValueError(
            f"--train_flips mirrors images; --task={config.task} has none.")


def resolve(config):
    """`config` checked, with the task's defaults in the fields left None.

    Raises:
        ValueError: an unknown task, variant, inner optimizer or strategy,
            an inner optimizer that contradicts the variant, or a value
            that cannot work (`check_values`).
    """
    _check(config)
    if config.inner_optimizer is None:
        config = dataclasses.replace(
            config, inner_optimizer=VARIANT_INNER_OPTIMIZER[config.variant])
    learners.check(config)
    defaults = dict(task_defaults(config.task, config.ways,
                                  config.paper_settings), meta_lr=1e-3)
    if config.learner != "maml":
        defaults = dict(learners.defaults(config.learner, config.task,
                                          config.paper_settings))
    elif config.task == "sinusoid":
        defaults.update(SINUSOID_RULE_DEFAULTS[config.inner_optimizer])
    # Off is 0.0, also in runs recorded before the flag (`INNER_GUARD_OFF`).
    defaults.setdefault("inner_guard", INNER_GUARD_OFF)
    defaults.setdefault("train_shift", 0)
    defaults.setdefault("train_distort", 0.0)
    defaults.setdefault("train_flips", False)
    # Proto-MAML's support views: chosen on validation (BUILD_NOTES 4.3).
    defaults.setdefault("support_shift", 3 if (
        config.learner == "maml" and config.variant == "proto_maml"
        and not config.paper_settings) else 0)
    if config.strategy != "default":
        # XLA on the whole step fails under MirroredStrategy (variables on
        # other devices); TPUStrategy compiles with XLA anyway. Keras 3.15
        # fails with steps_per_execution > 1 under MirroredStrategy (an
        # unfed placeholder in its while_loop, plain Keras models too).
        defaults = dict(defaults, jit_compile=False, steps_per_execution=1)
    filled = {k: (defaults[k] if getattr(config, k) is None and k in defaults
                  else getattr(config, k))
              for k in (f.name for f in dataclasses.fields(config))}
    if filled["eval_inner_steps"] is None:
        filled["eval_inner_steps"] = filled["inner_steps"]
    if config.task == "omniglot":
        filled["eval_shots"] = filled["eval_shots"] or (filled["shots"],)
        filled["eval_steps"] = filled["eval_steps"] or (
            filled["eval_inner_steps"],)
    config = Config(**filled)
    check_values(config)
    return config


def from_flags(flag_values=flags.FLAGS):
    """The `Config` of the parsed flags (unresolved)."""
    return Config(**config_flags.read(FLAG_SPECS, flag_values))

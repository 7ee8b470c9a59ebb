"""The settings of a learned-optimizer meta-training run and their flags.

`Config` declares the run's settings; the update rule's architecture
flags come from `keras_meta.rules.lstm.RuleConfig` itself (its
fields, types and defaults), with the help texts below. Together they are
the flags of examples/train_learned_optimizer.py (`FLAG_SPECS`).
"""

import dataclasses

from absl import flags

from keras_meta import distribute
from keras_meta.rules import lstm as lstm_rule

from examples import config_flags
from examples import flag_checks
from examples.config_flags import option

# Settings that `--resume` may change: they do not change what the
# checkpoints were trained with (each change is recorded in summary.json).
# Every other difference, the rule's flags included, is refused.
MAY_CHANGE_ON_RESUME = frozenset({
    "meta_steps", "verbose", "checkpoint_every",
    "keep_checkpoints", "profile", "profile_steps", "eval_every",
    "max_consecutive_skips", "tpu"})


@dataclasses.dataclass
class Config:
    """Settings of one meta-training run (the rule's are in `rule`)."""

    problems: tuple[str, ...] = option(
        ("quadratic", "mlp_teacher", "mlp_omniglot"),
        "Problem families of the meta-training mixture (see "
        "keras_meta.meta.problems.FAMILIES).")
    problem_weights: tuple[float, ...] | None = option(
        None, "Sampling weights of --problems (default uniform).")
    unroll: int = option(20, "Optimizee steps per truncation.")
    horizon: int = option(100, "Optimizee steps per run.")
    meta_steps: int = option(1000, "Meta-updates (truncations).")
    meta_lr: float = option(1e-3, "Adam learning rate on phi.")
    model_dir: str = option("runs/learned_optimizer",
                            "Where phi files and TensorBoard summaries go.")
    seed: int = option(0, "Seed of phi init and problem sampling.")
    second_order: bool = option(False, "Keep second derivatives.")
    meta_loss: str = option(
        "log", "Meta-objective: mean of log losses or of losses.",
        choices=("log", "mean"))
    clip_norm: float = option(1.0, "Global-norm clip of meta-gradients.")
    jit_compile: bool | None = option(
        None, "XLA-compile each truncation (default: on GPU and TPU, off on "
        "CPU, where it was measured slower).")
    profile: bool = option(
        False, "Write a TensorBoard profile (Profile tab; needs "
        "tensorboard-plugin-profile to view) of a few meta-steps to "
        "model_dir/profile.")
    profile_steps: tuple[int, ...] = option(
        (3, 5), "With --profile: the first and last meta-step profiled.")
    eval_every: int = option(200, "Evaluate (and keep best) every N.")
    init_weights: str | None = option(None, "Start from this phi file.")
    checkpoint_every: int = option(
        100, "Meta-steps between checkpoints (also on SIGTERM/SIGINT).")
    keep_checkpoints: int = option(3, "Checkpoints kept.")
    resume: bool = option(
        False, "Continue from the newest checkpoint in model_dir.")
    max_consecutive_skips: int = option(
        20, "Stop after this many non-finite meta-steps in a row.")
    strategy: str = option(
        "default", "tf.distribute strategy: default (one device), "
        "mirrored, multi_worker (TF_CONFIG; only the chief writes "
        "model_dir) or tpu (see --tpu). Each meta-step optimizes one "
        "problem instance per replica.", choices=distribute.STRATEGIES)
    tpu: str | None = option(
        None, "With --strategy=tpu: the TPU's name or grpc:// address; "
        "'local' on a TPU VM.")
    rule_kind: str = option(
        "lstm", "The update rule meta-trained: the LSTM rule (its flags "
        "below) or the normalized MLP rule (keras_meta.rules.normalized, "
        "NormalizedConfig's defaults; --init_weights may name a normalized "
        "file).", choices=("lstm", "normalized"))
    normalize: str = option(
        "tensor", "--rule_kind=normalized: NormalizedConfig.normalize "
        "(RMS-normalize the direction per tensor, or keep Adam's "
        "per-coordinate scale).", choices=("tensor", "none"))
    antisymmetric: bool = option(
        False, "--rule_kind=normalized: NormalizedConfig.antisymmetric (the "
        "MLP's output odd in its features: no learned constant drift).")
    parameter_feature: bool = option(
        True, "--rule_kind=normalized: NormalizedConfig.parameter_feature "
        "(the MLP sees p / rms(p); off: only the gradient's history).")
    momentum_decays: tuple[float, ...] = option(
        (0.9, 0.99, 0.999), "--rule_kind=normalized: "
        "NormalizedConfig.momentum_decays (the first-moment averages the "
        "MLP reads; one float of optimizer state per parameter each).")
    estimator: str = option(
        "tbptt", "Meta-gradient estimator: truncated backpropagation, or "
        "persistent evolution strategies (antithetic forward-only pairs, "
        "unbiased over long horizons).", choices=("tbptt", "pes"))
    num_particles: int = option(
        8, "--estimator=pes: antithetic pairs (problem instances) per "
        "meta-step.")
    sigma: float = option(
        0.01, "--estimator=pes: standard deviation of the perturbations.")
    horizon_range: tuple[int, ...] | None = option(
        None, "--estimator=pes: low,high: each run draws its horizon among "
        "the multiples of --unroll there (default: --horizon).")
    vectorize_pairs: bool = option(
        False, "--estimator=pes: run each pair's two runs as one batched "
        "program (tf.vectorized_map).")
    meta_objective: str = option(
        "train", "--estimator=pes: meta-loss of the training losses, or of "
        "the loss on held-out examples at each truncation's end (needs "
        "--tasks).", choices=("train", "validation"))
    tasks: str | None = option(
        None, "A task distribution instead of --problems: small_omniglot "
        "(keras_meta.meta.task_family: 8x8/14x14 Omniglot of the training "
        "alphabets, MLPs, convnets, autoencoders, augmented).",
        choices=("small_omniglot",))
    task_layer_norm: float = option(
        0.0, "--tasks: probability that an MLP or convnet of the task "
        "distribution has layer normalization after each hidden layer "
        "(scale-invariant weights, as in Transformers).")
    task_kinds: tuple[str, ...] = option(
        ("mlp", "conv", "autoencoder"), "--tasks: the kinds of task drawn in "
        "turn: mlp, conv, autoencoder, and tokens (patch-token classifiers "
        "with an embedding table), teacher and easy_teacher (fresh inputs "
        "labelled by a random linear teacher, of rank 2 for easy_teacher), "
        "regression (noisy targets); keras_meta.meta.task_family.")
    num_tasks: int = option(
        16, "--tasks: architectures drawn (seeded by --seed).")
    eval_tasks: int | None = option(
        None, "Evaluate on the first N problems only (default all).")
    eval_steps: int | None = option(
        None, "Optimizee steps of each evaluation run (default --horizon).")
    eval_objective: str = option(
        "train", "Evaluation score (which picks phi_best): mean log "
        "training loss over the run, or log loss of the final parameters "
        "on held-out examples (needs --tasks).",
        choices=("train", "validation"))
    rule: dict | None = option(
        None, "RuleConfig fields (None: its defaults, or those of "
        "init_weights).", flag=False)
    verbose: int = option(1, "Progress bar verbosity.", flag=False)


# The rule's flags: fields of lstm_rule.RuleConfig (type and default there).
RULE_FLAG_HELP = {
    "descent": "Rule variant: LSTM-modulated Adam direction, the paper's "
               "pure LSTM output, or LSTM-modulated heavy-ball momentum at "
               "a secant-curvature rate (for full-batch problems).",
    "granularity": "coordinate: an LSTM state per coordinate (the paper's); "
                   "tensor: one per tensor, steering Adam's step size.",
    "init_lr": "Initial step size of the rule (the untrained rule is Adam "
               "with this rate).",
    "init_hyper_rate": "--granularity=tensor: initial gain of the "
                       "hypergradient on the log step size.",
    "init_lr_drift": "--granularity=tensor: initial constant change of the "
                     "log step size per step.",
    "hyper_down_fraction": "--granularity=tensor: gain on negative "
                           "hypergradient cosines, as a fraction of the "
                           "gain on positive ones.",
    "hyper_horizon": "--granularity=tensor: horizon, in steps, of the "
                     "hypergradient (1: one step; above 1: against an "
                     "average of past directions).",
    "min_offset": "--granularity=tensor: lowest log step-size offset from "
                  "the base rate (log(1/10): at most 10x below).",
    "max_offset": "--granularity=tensor: highest log step-size offset from "
                  "the base rate.",
    "beta_1": "Decay of the rule's first moment (the momentum of "
              "--descent=momentum).",
    "hidden_size": "LSTM units per layer.",
    "num_layers": "LSTM layers.",
}
RULE_FLAG_CHOICES = {"descent": ("adam", "none", "momentum"),
                     "granularity": lstm_rule.GRANULARITIES}
RULE_FLAG_SPECS = config_flags.specs(lstm_rule.RuleConfig, RULE_FLAG_HELP,
                                     RULE_FLAG_CHOICES)
FLAG_SPECS = config_flags.specs(Config) + RULE_FLAG_SPECS


def check_values(config, families=()):
    """Raises `ValueError` on a setting that cannot work, before anything
    is built: a count that is not an int >= 1 (zero is refused, not taken
    as "never"), a horizon that is not a multiple of the unroll, a learning
    rate or clip norm that is negative, NaN or inf, an unknown problem
    family (when `families` is given), or problem weights that do not
    match the problems."""
    for name in ("unroll", "horizon", "meta_steps", "eval_every",
                 "checkpoint_every", "keep_checkpoints",
                 "max_consecutive_skips"):
        flag_checks.positive_int(name, getattr(config, name))
    if config.horizon % config.unroll:
        raise ValueError(
            f"--horizon ({config.horizon}) must be a multiple of --unroll "
            f"({config.unroll}).")
    flag_checks.number("meta_lr", config.meta_lr)
    flag_checks.number("clip_norm", config.clip_norm, strict=True)
    flag_checks.non_negative_int("seed", config.seed)
    if not config.problems:
        raise ValueError("--problems must name at least one family.")
    unknown = [p for p in config.problems if families and p not in families]
    if unknown:
        raise ValueError(f"--problems names unknown families {unknown}; "
                         f"known: {sorted(families)}.")
    _check_weights(config.problems, config.problem_weights)
    if config.profile:
        flag_checks.step_range("profile_steps", config.profile_steps)


def _check_weights(problems, weights):
    if weights is None:
        return
    if len(weights) != len(problems):
        raise ValueError(
            f"--problem_weights gives {len(weights)} weights for "
            f"{len(problems)} --problems ({list(problems)}).")
    for w in weights:
        flag_checks.number("problem_weights", w)
    if not sum(weights) > 0:
        raise ValueError(
            f"--problem_weights must not all be 0; got {list(weights)}.")


def from_flags(flag_values=flags.FLAGS):
    """The `Config` of the parsed flags, the rule's flags in `rule`."""
    run = config_flags.read(config_flags.specs(Config), flag_values)
    rule = config_flags.read(RULE_FLAG_SPECS, flag_values)
    return Config(rule=rule, **run)

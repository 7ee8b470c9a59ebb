"""`NormalizedConfig`: the architecture of the normalized MLP rule (not its
values)."""

import dataclasses
import math
import numbers
import typing

from keras_meta import validation

# The `rule_type` a weights file's config names this rule by.
RULE_TYPE = "normalized_mlp"


@dataclasses.dataclass(frozen=True)
class NormalizedConfig:
    """Architecture of `NormalizedMLPRule` (not its trained values).

    Attributes:
        hidden_size: units per hidden layer of the per-parameter MLP.
        num_layers: hidden layers of the MLP (>= 1).
        momentum_decays: decays of the first-moment averages kept per
            parameter; the first is Adam's `beta_1` (the nominal direction
            `m_hat / (sqrt(v_hat) + eps)` uses it), all are MLP features.
        beta_2: decay of the second-moment average.
        epsilon: added to `sqrt(v_hat)`.
        progress_timescales: `tau` of the training-progress features
            `tanh(t / tau)` (`t` the number of steps taken, no total needed).
        init_lr: the base step size `exp(log_lr)` of `init_meta_params`.
        output_scale: scale of the MLP's output added to Adam's direction.
        lr_range: `(low, high)` bounds of the base step size `exp(log_lr)`.
        max_schedule_offset: bound of the learned schedule's log offset: the
            step size stays within `exp(+-max_schedule_offset)` of the base.
        parameter_feature: give the MLP the parameter over its tensor's
            RMS (`p / rms(p)`) as a feature. Without it the rule sees only
            the gradient's history, as Adam does, and cannot decay or grow
            weights by their size (which fights the scale invariance of
            weights feeding a normalization layer).
        normalize: `"tensor"` divides the direction by its RMS over the
            tensor at every step; `"none"` keeps Adam's per-coordinate
            scale (better for sparse rows: a tensor whose gradient touches
            few rows is not amplified).
        antisymmetric: make the MLP's output odd in the per-parameter
            features (`(MLP(f) - MLP(-f)) / 2`), so that it cannot learn a
            constant drift of every parameter (ES noise otherwise moves the
            output bias freely); twice the MLP's arithmetic.
        hyper_rate: gain of hypergradient step-size adaptation (Baydin et
            al., 2018); 0 turns it off. Each tensor keeps a log step-size
            offset, `offset += hyper_rate * c_t` clipped to
            `hyper_offset_range`, with `c_t` the cosine between the
            gradient and the preconditioned momentum
            `m_k / (sqrt(v_hat) + eps)` of the previous step
            (`k = hyper_momentum`): positive while steps keep making
            progress along the recent direction, negative when they
            overshoot. Costs one scalar per tensor.
        hyper_momentum: index into `momentum_decays` of the average the
            cosine is taken against; a long average (0.99: about 100
            steps) discounts the high-curvature oscillation that makes the
            one-step hypergradient shrink rates too far.
        hyper_down_fraction: gain on negative cosines, as a fraction of
            `hyper_rate` (1: the plain hypergradient).
        hyper_offset_range: `(low, high)` bounds of the log offset: the
            adapted step size stays within `exp(low)` and `exp(high)` of
            the rule's own step size (a trust region: unbounded rates
            overfit or diverge).
        mlp_tensors: the tensors whose direction gets the MLP's term:
            `"all"`, or `"matrices"` (rank 2 and up): vectors (biases,
            normalization scales and offsets) then take Adam's direction at
            the rule's step size, as AdamW practice exempts them from
            weight decay and Celo2 gives them AdamW.
        decay_power: an anytime decay of the step size, which needs no
            total step count: after `decay_start` steps the step size is
            multiplied by `(decay_start / t) ** decay_power`; 0 keeps it.
        decay_start: the step at which that decay begins.
        total_steps: the number of steps training will take, where known
            (`fit`'s `epochs * steps_per_epoch`, over
            `gradient_accumulation_steps` where set: the rule counts the
            steps it takes, not batches); None (unknown) keeps the
            step size as the rule learned it. Given, the last
            `cooldown_fraction` of them decay the step size linearly to 0
            (warmup-stable-decay's cooldown, Hagele et al., 2024): step
            `t` is multiplied by `min(1, (total_steps - t + 1) /
            (cooldown_fraction * total_steps))`, and by 0 past
            `total_steps`, as Keras's `CosineDecay` ends.
        cooldown_fraction: the fraction of `total_steps` that decays, in
            (0, 1].
        dense_table_decay: keep the learned decay (the MLP's parameter
            feature) on an embedding table whose sparse gradient touches
            every row in a step; False removes it there for that step (the
            feature's weights zeroed, as `drop_parameter_feature` does).
            Read from a `tf.IndexedSlices` gradient
            (`NormalizedMLPRule.table_step`):
            dense gradients, as under gradient accumulation, keep the
            decay. A small vocabulary seen in every batch is a dense layer
            whose size the loss needs; a large one's untouched rows are
            what the decay regularizes.
        lazy_tables: a step on an embedding table whose gradient comes as
            sparse rows changes only the rows it touches, their values and
            their state (LazyAdam's semantics;
            `NormalizedMLPRule.table_step`); untouched rows keep their
            values, momenta and second moments, so a rare row moves about
            one step per occurrence instead of coasting on its momentum
            (and its learned decay) in between. False: every row steps on
            the summed dense gradient, as in Keras's Adam. Dense gradients
            step every row either way.
        factored_second_moment: keep the second moment of a tensor of rank
            2 and up as Adafactor does (Shazeer and Stern, 2018): viewed as
            a `[rows, cols]` matrix (`cols` the last axis), an average of
            `g**2` per row and one per column, `rows + cols` floats in all,
            and `v_hat[i, j] = row[i] * col[j] / mean(row)`. The state
            then holds one float per parameter less (the momenta stay
            whole); vectors keep `v` whole. `lazy_tables` then keeps only
            the momenta of untouched rows (the factors are shared).
        bfloat16_momenta: a Keras optimizer (`LearnedOptimizer`) stores
            the momenta whose decay is at most `bfloat16_max_decay` (by
            default the default's 0.9 and 0.99) in bfloat16, rounded
            stochastically
            (`optimizers.stochastic_rounding`), for float32 variables: half
            a float per parameter less for each. The rule computes in
            float32 either way; the pure rule's state (meta-training, MAML)
            is unchanged. Slower averages stay float32: their rounding
            error grows as `1 / sqrt(1 - decay**2)` ulps.
        bfloat16_max_decay: the slowest momentum decay `bfloat16_momenta`
            stores in bfloat16, at most `BFLOAT16_MAX_DECAY` (0.99); 0.9
            stores only the fastest.
        bfloat16_second_moment: a Keras optimizer stores `v` (whole or
            factored) of float32 variables in bfloat16, rounded
            stochastically: half a float per parameter less. Its rounding
            error grows as `1 / sqrt(1 - beta_2**2)` ulps, as a slow
            momentum's does, and enters the step through `sqrt(v)`, which
            halves it. The rule and the pure rule's state are as for
            `bfloat16_momenta`.
        kept_momenta: how many of `momentum_decays`' averages (the first
            ones) the rule keeps; None keeps them all. The others are
            neither stored nor fed to the MLP: their features are 0, as if
            their rows of the MLP's first kernel were zeroed, and each
            saves one float per parameter. At least 1 (Adam's direction
            uses the first), and more than `hyper_momentum` where the rule
            adapts its step size.
    """

    # Fields a trained file's config may change (`weights_io.resolve`).
    UNTRAINED_FIELDS: typing.ClassVar[tuple] = (
        "mlp_tensors", "decay_power", "decay_start", "dense_table_decay",
        "lazy_tables", "factored_second_moment", "bfloat16_momenta",
        "bfloat16_max_decay", "bfloat16_second_moment", "kept_momenta",
        "total_steps", "cooldown_fraction")
    # The slowest momentum decay `bfloat16_momenta` may store in bfloat16.
    BFLOAT16_MAX_DECAY: typing.ClassVar[float] = 0.99

    hidden_size: int = 8
    num_layers: int = 1
    momentum_decays: tuple = (0.9, 0.99, 0.999)
    beta_2: float = 0.999
    epsilon: float = 1e-8
    progress_timescales: tuple = (10.0, 100.0, 1000.0, 10000.0)
    init_lr: float = 1e-3
    output_scale: float = 1.0
    lr_range: tuple = (1e-6, 1e-1)
    max_schedule_offset: float = math.log(100.0)
    normalize: str = "tensor"
    parameter_feature: bool = True
    antisymmetric: bool = False
    hyper_rate: float = 0.0
    hyper_momentum: int = 1
    hyper_down_fraction: float = 0.5
    hyper_offset_range: tuple = (math.log(0.1), math.log(10.0))
    mlp_tensors: str = "all"
    decay_power: float = 0.0
    decay_start: float = 1000.0
    dense_table_decay: bool = True
    lazy_tables: bool = False
    factored_second_moment: bool = False
    bfloat16_momenta: bool = False
    bfloat16_max_decay: float = 0.99
    bfloat16_second_moment: bool = False
    kept_momenta: typing.Optional[int] = None
    total_steps: typing.Optional[int] = None
    cooldown_fraction: float = 0.2

    def __post_init__(self):
        for name in ("momentum_decays", "progress_timescales", "lr_range",
                     "hyper_offset_range"):
            object.__setattr__(self, name,
                               tuple(float(x) for x in getattr(self, name)))
        if self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError(
                "hidden_size and num_layers must be positive, got "
                f"{self.hidden_size} and {self.num_layers}.")
        decays = self.momentum_decays + (self.beta_2,)
        if not self.momentum_decays or not all(0.0 <= d < 1.0 for d in decays):
            raise ValueError(
                "momentum_decays (at least one) and beta_2 must be in [0, 1); "
                f"got {self.momentum_decays} and {self.beta_2}.")
        if not all(tau > 0 for tau in self.progress_timescales):
            raise ValueError("progress_timescales must be positive, got "
                             f"{self.progress_timescales}.")
        low, high = self.lr_range
        if not (len(self.lr_range) == 2 and 0 < low <= self.init_lr <= high):
            raise ValueError(
                "Need lr_range = (low, high) with 0 < low <= init_lr <= high; "
                f"got lr_range={self.lr_range}, init_lr={self.init_lr}.")
        for name in ("parameter_feature", "antisymmetric",
                     "dense_table_decay", "lazy_tables",
                     "factored_second_moment", "bfloat16_momenta",
                     "bfloat16_second_moment"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got "
                                 f"{getattr(self, name)!r}.")
        if self.normalize not in ("tensor", "none"):
            raise ValueError("normalize must be 'tensor' or 'none', got "
                             f"{self.normalize!r}.")
        # hyper_momentum is read only where the rule adapts its step size,
        # so a rule with one momentum keeps the default index.
        if not (self.hyper_rate >= 0.0 and 0.0 <= self.hyper_down_fraction
                and isinstance(self.hyper_momentum, int)
                and not isinstance(self.hyper_momentum, bool)
                and 0 <= self.hyper_momentum
                and (self.hyper_rate == 0.0
                     or self.hyper_momentum < len(self.momentum_decays))):
            raise ValueError(
                "Need hyper_rate >= 0, hyper_down_fraction >= 0 and "
                "0 <= hyper_momentum (< len(momentum_decays) where "
                "hyper_rate > 0); got "
                f"hyper_rate={self.hyper_rate!r}, hyper_down_fraction="
                f"{self.hyper_down_fraction!r}, hyper_momentum="
                f"{self.hyper_momentum!r} with momentum_decays="
                f"{self.momentum_decays}.")
        low, high = self.hyper_offset_range
        if not (len(self.hyper_offset_range) == 2 and low <= 0.0 <= high):
            raise ValueError(
                "hyper_offset_range must be (low, high) with low <= 0 <= "
                f"high; got {self.hyper_offset_range}.")
        if not self.max_schedule_offset > 0:
            raise ValueError("max_schedule_offset must be > 0, got "
                             f"{self.max_schedule_offset}.")
        self._check_untrained_fields()

    def _check_untrained_fields(self):
        """`UNTRAINED_FIELDS`: evaluation-time choices, settable on a
        trained file's config."""
        if self.mlp_tensors not in ("all", "matrices"):
            raise ValueError("mlp_tensors must be 'all' or 'matrices', got "
                             f"{self.mlp_tensors!r}.")
        for name in ("decay_power", "decay_start", "bfloat16_max_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{name} must be a number, got {value!r}.")
            object.__setattr__(self, name, float(value))
        if not (self.decay_power >= 0.0 and self.decay_start > 0.0):
            raise ValueError(
                "Need decay_power >= 0 and decay_start > 0; got "
                f"decay_power={self.decay_power!r}, "
                f"decay_start={self.decay_start!r}.")
        kept = self.kept_momenta
        if kept is not None and (
                isinstance(kept, bool) or not isinstance(kept, int)
                or not 1 <= kept <= len(self.momentum_decays)
                or (self.adapts_step_size and kept <= self.hyper_momentum)):
            raise ValueError(
                "kept_momenta must be None or an int in [1, "
                f"{len(self.momentum_decays)}] (the number of "
                "momentum_decays), above hyper_momentum="
                f"{self.hyper_momentum} where hyper_rate > 0; got "
                f"{kept!r}.")
        total = self.total_steps
        if total is not None and (isinstance(total, bool)
                                  or not isinstance(total, numbers.Integral)
                                  or total < 1):
            raise ValueError("total_steps must be None or a positive int, "
                             f"got {total!r}.")
        fraction = self.cooldown_fraction
        if (isinstance(fraction, bool) or not isinstance(fraction, numbers.Real)
                or not 0.0 < fraction <= 1.0):
            raise ValueError("cooldown_fraction must be a number in (0, 1], "
                             f"got {fraction!r}.")
        if not 0.0 <= self.bfloat16_max_decay <= self.BFLOAT16_MAX_DECAY:
            raise ValueError(
                "bfloat16_max_decay must be in [0, "
                f"{self.BFLOAT16_MAX_DECAY}] (slower averages stay float32); "
                f"got {self.bfloat16_max_decay!r}.")

    @property
    def adapts_step_size(self):
        """Whether each tensor keeps a hypergradient step-size offset."""
        return self.hyper_rate > 0.0

    @property
    def num_kept_momenta(self):
        """The momenta the rule stores: the first `kept_momenta` of
        `momentum_decays` (all where None)."""
        if self.kept_momenta is None:
            return len(self.momentum_decays)
        return self.kept_momenta

    @property
    def num_parameter_features(self):
        """Per-parameter MLP inputs: g, each momentum (over sqrt(v_hat)),
        and (with `parameter_feature`) the parameter over its tensor's
        RMS."""
        return len(self.momentum_decays) + 1 + int(self.parameter_feature)

    @property
    def num_tensor_features(self):
        """Per-tensor inputs: the progress features and a vector flag."""
        return len(self.progress_timescales) + 1

    def to_dict(self):
        d = dataclasses.asdict(self)
        for name in ("momentum_decays", "progress_timescales", "lr_range",
                     "hyper_offset_range"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d):
        return validation.dataclass_from_dict(cls, d)

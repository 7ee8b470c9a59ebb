"""`RuleConfig`: the architecture of the LSTM update rule (not its values)."""

import dataclasses

from keras_meta import validation

DESCENTS = ("adam", "none", "sgd", "momentum")
GRANULARITIES = ("coordinate", "tensor")
# RMS size of the first step of a "momentum" rule, before any curvature.
MOMENTUM_PROBE_STEP = 1e-3
# Features of the per-tensor rule (see `features.tensor_features`).
NUM_TENSOR_FEATURES = 6
# Widest range of the per-tensor log learning-rate offset from phi["log_lr"];
# RuleConfig.min_offset / max_offset narrow it.
LOG_LR_OFFSET_RANGE = (-12.0, 8.0)


@dataclasses.dataclass(frozen=True)
class RuleConfig:
    """Architecture of the update rule (not its trained values).

    Attributes:
        hidden_size: units per LSTM layer (paper: 20).
        num_layers: stacked LSTM layers (paper: 2).
        preprocess_p: the `p` of the log/sign gradient preprocessing (10).
        descent: `"adam"` (LSTM modulates a nominal Adam direction),
            `"none"` (the paper's pure LSTM output), `"sgd"` (LSTM
            modulates the plain gradient at the fixed rate `init_lr`) or
            `"momentum"` (LSTM modulates heavy-ball momentum whose rate
            follows a secant estimate of the curvature).
        output_scale: scale of the LSTM's linear outputs (paper: 0.1).
        beta_1: decay of the first-moment average used in the features.
        beta_2: decay of the second-moment average used in the features.
        epsilon: added to `sqrt(v_hat)`.
        init_lr: initial `exp(phi["log_lr"])` for `init_phi`; with
            `descent="sgd"`, the fixed nominal SGD rate.
        granularity: `"coordinate"` (the paper's: an LSTM state per
            coordinate) or `"tensor"` (one LSTM state per tensor that
            steers Adam's step size for the whole tensor; see
            `keras_meta.rules.lstm.tensor`), a few elementwise passes more
            than Adam per step instead of an LSTM per coordinate.
        init_hyper_rate: initial `phi["hyper_rate"]` of a `"tensor"` rule
            (for `init_phi`): the gain of the hypergradient feature on the
            log learning rate.
        init_lr_drift: initial constant change of a `"tensor"` rule's log
            step size per step (the output bias of `o_0`, for `init_phi`);
            a small positive drift offsets the hypergradient's known
            preference for too-small steps under minibatch noise.
        hyper_down_fraction: a `"tensor"` rule's gain on negative
            hypergradient cosines, as a fraction of `hyper_rate` (1: the
            plain hypergradient). Below 1 the step size falls more slowly
            than it rises, against the same short-horizon bias.
        hyper_horizon: a `"tensor"` rule's hypergradient horizon in steps.
            1 (the default): `cos(g_t, d_{t-1})`, the one-step
            hypergradient. Above 1: `cos(g_t, u_{t-1})`, `u` an average of
            past directions with decay `1 - 1/hyper_horizon`, i.e. the
            derivative of the current loss with respect to a step size held
            over about that many past steps. Costs one more tensor of state.
        min_offset, max_offset: a `"tensor"` rule's range of the log
            step-size offset (defaults -12 and 8: practically unbounded).
            `(log(1/F), log(G))` keeps every tensor's step size between F
            times below and G times above its meta-learned base rate
            (before the LSTM's own `o_1`): a trust region against the
            hypergradient decaying or raising rates without end on runs
            longer than it was meta-trained for.
    """

    hidden_size: int = 20
    num_layers: int = 2
    preprocess_p: float = 10.0
    descent: str = "adam"
    output_scale: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-8
    init_lr: float = 1e-2
    granularity: str = "coordinate"
    init_hyper_rate: float = 0.05
    init_lr_drift: float = 0.0
    hyper_down_fraction: float = 1.0
    hyper_horizon: float = 1.0
    min_offset: float = -12.0
    max_offset: float = 8.0

    def __post_init__(self):
        if self.descent not in DESCENTS:
            raise ValueError(
                f"descent must be one of {DESCENTS}, got {self.descent!r}."
            )
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {GRANULARITIES}, got "
                f"{self.granularity!r}."
            )
        if self.granularity == "tensor" and self.descent != "adam":
            raise ValueError(
                "granularity='tensor' needs descent='adam' (the per-tensor "
                f"LSTM modulates Adam's direction); got descent={self.descent!r}."
            )
        if not self.hyper_horizon >= 1.0:
            raise ValueError(
                f"hyper_horizon must be >= 1 (steps), got {self.hyper_horizon!r}."
            )
        low, high = LOG_LR_OFFSET_RANGE
        if not (low <= self.min_offset <= 0.0 <= self.max_offset <= high):
            raise ValueError(
                f"Need {low} <= min_offset <= 0 <= max_offset <= {high}; got "
                f"min_offset={self.min_offset!r}, max_offset={self.max_offset!r}."
            )
        if self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError(
                "hidden_size and num_layers must be positive, got "
                f"{self.hidden_size} and {self.num_layers}."
            )

    @property
    def input_size(self):
        if self.granularity == "tensor":
            return NUM_TENSOR_FEATURES
        return 4 if self.descent in ("adam", "momentum") else 2

    @property
    def output_size(self):
        return 3 if self.granularity == "tensor" else 2

    @property
    def state_size(self):
        return self.num_layers * self.hidden_size

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        return validation.dataclass_from_dict(cls, d)

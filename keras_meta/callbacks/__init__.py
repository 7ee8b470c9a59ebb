"""Keras callbacks for meta-learning runs.

By kind: `summaries` (`TensorBoard` with grouped tags; views of the inner
rule, learned step sizes and episodes), `guards` (stop on repeated
non-finite steps or a wall-time limit) and `checkpoints` (periodic,
atomic, signal-aware model checkpoints and the helpers that name, find and
prune them); `validation_control` (an optimizer steered by held-out loss
during `fit`).
"""

from keras_meta.callbacks.checkpoints import CHECKPOINT_PREFIX  # noqa: F401
from keras_meta.callbacks.checkpoints import PeriodicCheckpoint  # noqa: F401
from keras_meta.callbacks.checkpoints import checkpoint_path  # noqa: F401
from keras_meta.callbacks.checkpoints import latest_checkpoint  # noqa: F401
from keras_meta.callbacks.checkpoints import prune_checkpoints  # noqa: F401
from keras_meta.callbacks.guards import NonFiniteGuard  # noqa: F401
from keras_meta.callbacks.guards import TrainingTimeLimit  # noqa: F401
from keras_meta.callbacks.summaries import EpisodeImageSummary  # noqa: F401
from keras_meta.callbacks.summaries import InnerOptimizerSummary  # noqa: F401
from keras_meta.callbacks.summaries import InnerRateSummary  # noqa: F401
from keras_meta.callbacks.summaries import LearnedStepSizeSummary  # noqa: F401
from keras_meta.callbacks.summaries import TAG_GROUPS  # noqa: F401
from keras_meta.callbacks.summaries import TensorBoard  # noqa: F401
from keras_meta.callbacks.summaries import grouped_tag  # noqa: F401
from keras_meta.callbacks.validation_control import (  # noqa: F401
    ValidationControl)

"""Hyperparameter sweeps over the example scripts, with the TensorBoard
HParams dashboard. See `keras_meta.sweeps.runner` and examples/sweep.py."""

from keras_meta.sweeps.runner import SweepConfig  # noqa: F401
from keras_meta.sweeps.runner import default_parallel  # noqa: F401
from keras_meta.sweeps.runner import make_plan  # noqa: F401
from keras_meta.sweeps.runner import run_sweep  # noqa: F401
from keras_meta.sweeps.spec import parse_sweep  # noqa: F401

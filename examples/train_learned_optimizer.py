"""Meta-trains keras_meta's LSTM learned optimizer and writes its phi file.

Example (the shipped weights; see BUILD_NOTES.md for the exact command):

    python examples/train_learned_optimizer.py \
        --problems=quadratic,mlp_teacher,mlp_omniglot \
        --unroll=20 --horizon=100 --meta_steps=3000 --meta_lr=3e-3 \
        --model_dir=runs/lopt --seed=0

TensorBoard: `tensorboard --logdir runs/lopt`. Copy `runs/lopt/phi_best.npz`
to keras_meta/optimizers/pretrained/lstm_phi.npz to ship it. The whole state
is checkpointed to runs/lopt/checkpoints every --checkpoint_every meta-steps
and on SIGTERM/SIGINT (then the script exits with status 128 + signal);
--resume continues bitwise where it stopped. A model_dir in use by another
run is refused. The flags are declared in examples/learned_optimizer/
config.py.
"""

import json
import os
import sys

# The applications live beside this script, in the repository's `examples`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from keras_meta import errors  # noqa: E402
from keras_meta import run_dir  # noqa: E402

from examples import config_flags  # noqa: E402
from examples.learned_optimizer import config  # noqa: E402
from examples.learned_optimizer import train  # noqa: E402

config_flags.define(config.FLAG_SPECS)
# Listed by --help as this script's own flags.
flags.adopt_module_key_flags(config_flags)


def main(argv):
    del argv
    try:
        summary = train.run(config.from_flags())
    except errors.TrainingInterrupted as e:
        print(f"\n{e}")
        sys.exit(128 + e.signum)
    except run_dir.DirectoryInUse as e:
        sys.exit(str(e))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main)

r"""Meta-train MAML or a variant on sinusoid regression or Omniglot.

    python examples/train_maml.py --model_dir=runs/sinusoid
    python examples/train_maml.py --inner_optimizer=lstm --model_dir=runs/lstm
    python examples/train_maml.py --inner_optimizer=meta_sgd --inner_steps=5 \
        --step_weights=4,1,1,1,1 --meta_clipnorm=1 --eval_steps=1,5,10 \
        --model_dir=runs/meta_sgd
    python examples/train_maml.py --task=omniglot \
        --data_dir=../shared/data/omniglot --model_dir=runs/omniglot5
    tensorboard --logdir runs

Trains with Keras's progress bar, logs to TensorBoard under model_dir/logs,
checkpoints to model_dir/checkpoints every --checkpoint_every steps and on
SIGTERM/SIGINT (then exits with status 128 + signal; continue with
--resume, which ends bitwise where an uninterrupted run would), saves
model_dir/model.keras, and prints the held-out evaluation: sinusoid, the mean
query MSE with its 95% confidence interval over --eval_tasks new tasks for
each K in --eval_shots after each count in --eval_steps; Omniglot, the query
accuracy after adaptation over --eval_tasks episodes of held-out alphabets.
Flags left unset take the task's defaults (the MAML paper's settings; see
examples/maml/config.py, where every flag is declared); on sinusoid the
learned inner rules (meta_sgd, lslr, lstm) also default to --inner_guard=2
(a task stops where an inner step takes its support loss above twice its
value before adaptation) and to validating and adapting with --inner_steps
steps. A model_dir in use by another run is refused.
"""

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
from examples.maml import config  # noqa: E402
from examples.maml import train  # noqa: E402

config_flags.define(config.FLAG_SPECS)
# Listed by --help as this script's own flags.
flags.adopt_module_key_flags(config_flags)


def main(argv):
    del argv
    if flags.FLAGS.evaluate_only:
        results = train.evaluate_saved(config.from_flags())
        print(results["formatted"])
        return
    try:
        results = train.run(config.from_flags())
    except errors.TrainingInterrupted as e:
        print(f"\n{e}")
        # The shell's convention for a process ended by a signal.
        sys.exit(128 + e.signum)
    except run_dir.DirectoryInUse as e:
        sys.exit(str(e))
    print(f"\nMeta-trained {results['meta_steps']} steps in "
          f"{results['train_seconds']:.0f} s; model: {results['model_path']}")
    print(results["formatted"])


if __name__ == "__main__":
    app.run(main)

r"""Grid or random search over the flags of train_maml.py or
train_learned_optimizer.py, with the TensorBoard HParams dashboard.

    python examples/sweep.py --target=train_maml \
        --sweep='inner_lr=0.001,0.01,0.1;meta_lr=1e-3,3e-4' \
        --budget_steps=5000 --sweep_dir=runs/sweep -- --eval_tasks=200
    tensorboard --logdir runs/sweep      # then the HPARAMS tab

Each trial is a child process with its own model_dir (sweep_dir/trials/<id>/
model) and seed; flags after `--` go to every trial. Trials worse than the
median of their peers at the same step are stopped early (--early_stopping).
Failed and diverged trials are recorded and the sweep goes on; run the same
command again to resume: finished trials are skipped. The summary table,
best first, is printed and written to sweep_dir/summary.csv and summary.json.
Swept and passed flags are checked against the target application's config
(examples/maml/config.py, examples/learned_optimizer/config.py) before
anything runs.
"""

import os
import sys

# The applications live beside this script, in the repository's `examples`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from keras_meta import run_dir  # noqa: E402

from examples import config_flags  # noqa: E402
from examples.sweeps import config  # noqa: E402
from examples.sweeps import plan  # noqa: E402
from examples.sweeps import runner  # noqa: E402

config_flags.define(config.FLAG_SPECS)
# Listed by --help as this script's own flags.
flags.adopt_module_key_flags(config_flags)
FLAGS = flags.FLAGS


def main(argv):
    sweep = config.from_flags(argv[1:])
    try:
        plan.make_plan(sweep)  # Checks everything; launches nothing.
    except ValueError as e:
        raise app.UsageError(str(e))
    try:
        summary = runner.run_sweep(sweep)
    except run_dir.DirectoryInUse as e:
        sys.exit(str(e))
    stop = summary["early_stopping"]
    print(f"\n{len(summary['trials'])} trials ({summary['counts']}); "
          f"{stop['trials_stopped']} stopped early, saving "
          f"{stop['steps_saved']} steps; {summary['wall_seconds']:.0f} s.")
    print(summary["table"])
    print(f"Summary: {FLAGS.sweep_dir}/summary.csv and summary.json; "
          f"dashboard: tensorboard --logdir {FLAGS.sweep_dir}")


if __name__ == "__main__":
    flags.mark_flag_as_required("sweep")
    app.run(main)

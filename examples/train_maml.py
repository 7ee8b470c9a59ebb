r"""Meta-train MAML or a variant on sinusoid regression or Omniglot.

    python examples/train_maml.py --model_dir=runs/sinusoid
    python examples/train_maml.py --inner_optimizer=lstm --model_dir=runs/lstm
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
keras_meta/experiments/maml_training.py).
"""

import sys

from absl import app
from absl import flags

from keras_meta import distribute
from keras_meta import errors
from keras_meta.experiments import maml_training

_D = maml_training.Config()

flags.DEFINE_enum("task", _D.task, maml_training.TASKS, "Task family.")
flags.DEFINE_enum("variant", _D.variant, maml_training.VARIANTS,
                  "maml, meta_sgd, maml_plus_plus (LSLR + multi-step loss) "
                  "or anil (adapt only the head).")
flags.DEFINE_enum("inner_optimizer", None, maml_training.INNER_OPTIMIZERS,
                  "Inner update rule: sgd (fixed rate), meta_sgd (learned "
                  "rate per parameter), lslr (learned rate per layer per "
                  "step) or lstm (learned coordinatewise LSTM). Unset: the "
                  "one --variant implies (maml and anil: sgd; meta_sgd: "
                  "meta_sgd; maml_plus_plus: lslr).")
flags.DEFINE_string("model_dir", _D.model_dir,
                    "Logs, checkpoints, model.keras and results.json.")
flags.DEFINE_string("data_dir", None,
                    "Omniglot: a folder with the official zips (offline); "
                    "unset: TFDS 'omniglot' (downloads once).")
flags.DEFINE_list("test_alphabets", list(_D.test_alphabets),
                  "Omniglot with --data_dir: held-out test alphabets.")
flags.DEFINE_integer("ways", _D.ways, "Omniglot: classes per episode (N).")
flags.DEFINE_integer("shots", None, "Support examples per class/task (K).")
flags.DEFINE_integer("queries", None, "Query examples per class/task in "
                     "training.")
flags.DEFINE_integer("eval_queries", None, "Query examples in evaluation.")
flags.DEFINE_integer("meta_batch_size", None, "Tasks per meta-step.")
flags.DEFINE_integer("train_steps", None, "Meta-steps in all.")
flags.DEFINE_integer("steps_per_epoch", None,
                     "Meta-steps between logs and validation.")
flags.DEFINE_integer("inner_steps", None, "Inner steps in meta-training.")
flags.DEFINE_integer("eval_inner_steps", None,
                     "Inner steps in validation and evaluation.")
flags.DEFINE_float("inner_lr", None, "Inner learning rate (Omniglot: in the "
                   "reference's convention, loss summed over classes).")
flags.DEFINE_float("meta_lr", _D.meta_lr, "Adam meta learning rate.")
flags.DEFINE_bool("first_order", _D.first_order,
                  "Drop second derivatives (FOMAML).")
flags.DEFINE_bool("jit_compile", None, "Compile the steps with XLA.")
flags.DEFINE_integer("steps_per_execution", None,
                     "Meta-steps per compiled call.")
flags.DEFINE_integer("filters", _D.filters, "Omniglot: conv4 filters.")
flags.DEFINE_integer("seed", _D.seed, "Random seed.")
flags.DEFINE_integer("eval_tasks", _D.eval_tasks,
                     "New tasks (episodes) in the final evaluation.")
flags.DEFINE_list("eval_shots", None, "Support sizes K of the evaluation.")
flags.DEFINE_list("eval_steps", None, "Inner step counts of the evaluation.")
flags.DEFINE_integer("checkpoint_every", None, "Meta-steps between "
                     "checkpoints (rounded to whole epochs).")
flags.DEFINE_integer("keep_checkpoints", _D.keep_checkpoints,
                     "Checkpoints kept.")
flags.DEFINE_bool("resume", _D.resume,
                  "Continue from the newest checkpoint in model_dir.")
flags.DEFINE_float("max_train_minutes", None,
                   "Stop meta-training after this much wall time.")
flags.DEFINE_integer("verbose", _D.verbose,
                     "Keras verbosity: 1 progress bar, 2 a line per epoch.")
flags.DEFINE_enum("strategy", _D.strategy, distribute.STRATEGIES,
                  "tf.distribute strategy: default (one device), mirrored "
                  "(all local GPUs), multi_worker (the cluster in TF_CONFIG; "
                  "only the chief writes model_dir) or tpu (see --tpu). The "
                  "meta-batch is split across replicas.")
flags.DEFINE_string("tpu", None, "With --strategy=tpu: the TPU's name or "
                    "grpc:// address; 'local' on a TPU VM.")

flags.DEFINE_bool("profile", False, "Write a TensorBoard profile (Profile "
                  "tab; needs tensorboard-plugin-profile to view) of a few "
                  "training calls to model_dir/logs/train.")
flags.DEFINE_list("profile_batches", ["3", "5"], "With --profile: the first "
                  "and last train-function call profiled (each call runs "
                  "--steps_per_execution meta-steps).")

FLAGS = flags.FLAGS


def _ints(values):
    return None if values is None else tuple(int(v) for v in values)


def config_from_flags():
    names = [f.name for f in maml_training.dataclasses.fields(
        maml_training.Config)]
    values = {name: FLAGS[name].value for name in names if name in FLAGS}
    values["eval_shots"] = _ints(values["eval_shots"])
    values["eval_steps"] = _ints(values["eval_steps"])
    values["test_alphabets"] = tuple(values["test_alphabets"])
    values["profile_batches"] = _ints(values["profile_batches"])
    return maml_training.Config(**values)


def main(argv):
    del argv
    try:
        results = maml_training.run(config_from_flags())
    except errors.TrainingInterrupted as e:
        print(f"\n{e}")
        # The shell's convention for a process ended by a signal.
        sys.exit(128 + e.signum)
    print(f"\nMeta-trained {results['meta_steps']} steps in "
          f"{results['train_seconds']:.0f} s; model: {results['model_path']}")
    print(results["formatted"])


if __name__ == "__main__":
    app.run(main)

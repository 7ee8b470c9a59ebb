r"""Meta-train MAML or a variant on sinusoid regression, then evaluate it.

    python examples/train_maml.py --model_dir=runs/sinusoid
    tensorboard --logdir runs/sinusoid/logs

Trains for --train_steps meta-steps with Keras's progress bar, logs the
meta-loss and the pre/post-adaptation query losses (and learned inner rates)
to TensorBoard, saves model_dir/model.keras, and prints the mean query MSE
with its 95% confidence interval over --eval_tasks new tasks for each K in
--eval_shots after each count in --eval_steps of inner steps.
"""

from absl import app
from absl import flags

from keras_meta.experiments import maml_sinusoid

_DEFAULTS = maml_sinusoid.Config()

flags.DEFINE_enum("task", "sinusoid", ["sinusoid"], "Task family.")
flags.DEFINE_enum("variant", _DEFAULTS.variant, maml_sinusoid.VARIANTS,
                  "maml, meta_sgd, maml_plus_plus (LSLR + multi-step loss) "
                  "or anil (adapt only the head).")
flags.DEFINE_string("model_dir", _DEFAULTS.model_dir,
                    "Where logs, backups, model.keras and results.json go.")
flags.DEFINE_integer("shots", _DEFAULTS.shots, "Support points per task.")
flags.DEFINE_integer("queries", _DEFAULTS.queries, "Query points per task.")
flags.DEFINE_integer("meta_batch_size", _DEFAULTS.meta_batch_size,
                     "Tasks per meta-step.")
flags.DEFINE_integer("train_steps", _DEFAULTS.train_steps, "Meta-steps.")
flags.DEFINE_integer("steps_per_epoch", _DEFAULTS.steps_per_epoch,
                     "Meta-steps between logs, validation and backups.")
flags.DEFINE_integer("inner_steps", _DEFAULTS.inner_steps,
                     "Inner steps during meta-training.")
flags.DEFINE_float("inner_lr", _DEFAULTS.inner_lr, "Inner learning rate.")
flags.DEFINE_float("meta_lr", _DEFAULTS.meta_lr, "Adam meta learning rate.")
flags.DEFINE_bool("first_order", _DEFAULTS.first_order,
                  "Drop second derivatives (FOMAML).")
flags.DEFINE_bool("jit_compile", _DEFAULTS.jit_compile,
                  "Compile the steps with XLA.")
flags.DEFINE_integer("steps_per_execution", _DEFAULTS.steps_per_execution,
                     "Meta-steps per compiled call.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Random seed.")
flags.DEFINE_integer("eval_tasks", _DEFAULTS.eval_tasks,
                     "New tasks per K in the final evaluation.")
flags.DEFINE_list("eval_shots", [str(k) for k in _DEFAULTS.eval_shots],
                  "Support sizes K of the final evaluation.")
flags.DEFINE_integer("verbose", _DEFAULTS.verbose,
                     "Keras verbosity: 1 progress bar, 2 a line per epoch.")
flags.DEFINE_list("eval_steps", [str(s) for s in _DEFAULTS.eval_steps],
                  "Inner step counts of the final evaluation.")

FLAGS = flags.FLAGS


def config_from_flags():
    return maml_sinusoid.Config(
        model_dir=FLAGS.model_dir,
        variant=FLAGS.variant,
        shots=FLAGS.shots,
        queries=FLAGS.queries,
        meta_batch_size=FLAGS.meta_batch_size,
        train_steps=FLAGS.train_steps,
        steps_per_epoch=FLAGS.steps_per_epoch,
        inner_steps=FLAGS.inner_steps,
        inner_lr=FLAGS.inner_lr,
        meta_lr=FLAGS.meta_lr,
        first_order=FLAGS.first_order,
        jit_compile=FLAGS.jit_compile,
        steps_per_execution=FLAGS.steps_per_execution,
        seed=FLAGS.seed,
        eval_tasks=FLAGS.eval_tasks,
        eval_shots=tuple(int(k) for k in FLAGS.eval_shots),
        eval_steps=tuple(int(s) for s in FLAGS.eval_steps),
        verbose=FLAGS.verbose,
    )


def main(argv):
    del argv
    from keras_meta import evaluation

    results = maml_sinusoid.run(config_from_flags())
    print(f"\nMeta-trained {results['meta_steps']} steps in "
          f"{results['train_seconds']:.0f} s; model: {results['model_path']}")
    print(evaluation.format_table(results["table"]))


if __name__ == "__main__":
    app.run(main)

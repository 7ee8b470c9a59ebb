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
--resume continues bitwise where it stopped.
"""

import json
import sys

from absl import app
from absl import flags

from keras_meta import distribute
from keras_meta import errors
from keras_meta.meta import train_lib

FLAGS = flags.FLAGS
flags.DEFINE_list("problems", ["quadratic", "mlp_teacher", "mlp_omniglot"],
                  "Problem families of the meta-training mixture (see "
                  "keras_meta.meta.problems.FAMILIES).")
flags.DEFINE_list("problem_weights", None,
                  "Sampling weights of --problems (default uniform).")
flags.DEFINE_integer("unroll", 20, "Optimizee steps per truncation.")
flags.DEFINE_integer("horizon", 100, "Optimizee steps per run.")
flags.DEFINE_integer("meta_steps", 1000, "Meta-updates (truncations).")
flags.DEFINE_float("meta_lr", 1e-3, "Adam learning rate on phi.")
flags.DEFINE_string("model_dir", "runs/learned_optimizer",
                    "Where phi files and TensorBoard summaries go.")
flags.DEFINE_integer("seed", 0, "Seed of phi init and problem sampling.")
flags.DEFINE_enum("descent", "adam", ["adam", "none", "momentum"],
                  "Rule variant: LSTM-modulated Adam direction, the "
                  "paper's pure LSTM output, or LSTM-modulated heavy-ball "
                  "momentum at a secant-curvature rate (for full-batch "
                  "problems).")
flags.DEFINE_enum("granularity", "coordinate", ["coordinate", "tensor"],
                  "coordinate: an LSTM state per coordinate (the paper's); "
                  "tensor: one per tensor, steering Adam's step size.")
flags.DEFINE_float("init_lr", 1e-2, "Initial step size of the rule (the "
                   "untrained rule is Adam with this rate).")
flags.DEFINE_float("init_hyper_rate", 0.05, "--granularity=tensor: initial "
                   "gain of the hypergradient on the log step size.")
flags.DEFINE_float("init_lr_drift", 0.0, "--granularity=tensor: initial "
                   "constant change of the log step size per step.")
flags.DEFINE_float("hyper_down_fraction", 1.0, "--granularity=tensor: gain "
                   "on negative hypergradient cosines, as a fraction of the "
                   "gain on positive ones.")
flags.DEFINE_float("hyper_horizon", 1.0, "--granularity=tensor: horizon, "
                   "in steps, of the hypergradient (1: one step; above 1: "
                   "against an average of past directions).")
flags.DEFINE_float("min_offset", -12.0, "--granularity=tensor: lowest log "
                   "step-size offset from the base rate (log(1/10): at most "
                   "10x below).")
flags.DEFINE_float("max_offset", 8.0, "--granularity=tensor: highest log "
                   "step-size offset from the base rate.")
flags.DEFINE_float("beta_1", 0.9, "Decay of the rule's first moment (the "
                   "momentum of --descent=momentum).")
flags.DEFINE_integer("hidden_size", 20, "LSTM units per layer.")
flags.DEFINE_integer("num_layers", 2, "LSTM layers.")
flags.DEFINE_bool("second_order", False, "Keep second derivatives.")
flags.DEFINE_enum("meta_loss", "log", ["log", "mean"],
                  "Meta-objective: mean of log losses or of losses.")
flags.DEFINE_float("clip_norm", 1.0, "Global-norm clip of meta-gradients.")
flags.DEFINE_bool("jit_compile", None, "XLA-compile each truncation "
                  "(default: on GPU and TPU, off on CPU, where it was "
                  "measured slower).")
flags.DEFINE_bool("profile", False, "Write a TensorBoard profile (Profile "
                  "tab; needs tensorboard-plugin-profile to view) of a few "
                  "meta-steps to model_dir/profile.")
flags.DEFINE_list("profile_steps", ["3", "5"], "With --profile: the first "
                  "and last meta-step profiled.")
flags.DEFINE_integer("eval_every", 200, "Evaluate (and keep best) every N.")
flags.DEFINE_string("init_weights", None, "Start from this phi file.")
flags.DEFINE_integer("checkpoint_every", 100,
                     "Meta-steps between checkpoints (also on SIGTERM/SIGINT).")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept.")
flags.DEFINE_bool("resume", False,
                  "Continue from the newest checkpoint in model_dir.")
flags.DEFINE_integer("max_consecutive_skips", 20,
                     "Stop after this many non-finite meta-steps in a row.")
flags.DEFINE_enum("strategy", "default", distribute.STRATEGIES,
                  "tf.distribute strategy: default (one device), mirrored, "
                  "multi_worker (TF_CONFIG; only the chief writes "
                  "model_dir) or tpu (see --tpu). Each meta-step optimizes "
                  "one problem instance per replica.")
flags.DEFINE_string("tpu", None, "With --strategy=tpu: the TPU's name or "
                    "grpc:// address; 'local' on a TPU VM.")


def main(argv):
    del argv
    try:
        summary = _run()
    except errors.TrainingInterrupted as e:
        print(f"\n{e}")
        sys.exit(128 + e.signum)
    print(json.dumps(summary, indent=2))


def _run():
    return train_lib.run(
        FLAGS.problems, unroll=FLAGS.unroll, horizon=FLAGS.horizon,
        meta_steps=FLAGS.meta_steps, meta_lr=FLAGS.meta_lr,
        model_dir=FLAGS.model_dir, seed=FLAGS.seed,
        rule={"descent": FLAGS.descent, "hidden_size": FLAGS.hidden_size,
              "num_layers": FLAGS.num_layers, "beta_1": FLAGS.beta_1,
              "granularity": FLAGS.granularity, "init_lr": FLAGS.init_lr,
              "init_hyper_rate": FLAGS.init_hyper_rate,
              "init_lr_drift": FLAGS.init_lr_drift,
              "hyper_down_fraction": FLAGS.hyper_down_fraction,
              "hyper_horizon": FLAGS.hyper_horizon,
              "min_offset": FLAGS.min_offset,
              "max_offset": FLAGS.max_offset},
        second_order=FLAGS.second_order, meta_loss=FLAGS.meta_loss,
        clip_norm=FLAGS.clip_norm,
        jit_compile="auto" if FLAGS.jit_compile is None else FLAGS.jit_compile,
        eval_every=FLAGS.eval_every, init_weights=FLAGS.init_weights,
        problem_weights=(None if FLAGS.problem_weights is None else
                         [float(w) for w in FLAGS.problem_weights]),
        checkpoint_every=FLAGS.checkpoint_every,
        keep_checkpoints=FLAGS.keep_checkpoints, resume=FLAGS.resume,
        max_consecutive_skips=FLAGS.max_consecutive_skips,
        strategy=FLAGS.strategy, tpu=FLAGS.tpu,
        profile_steps=(tuple(int(s) for s in FLAGS.profile_steps)
                       if FLAGS.profile else None))


if __name__ == "__main__":
    app.run(main)

"""How each shipped learned-optimizer weights file is made (data, no flags).

A recipe is one run of examples/train_learned_optimizer.py, stopped at the
shipped meta-step, and optionally a change of the rule config afterwards
(the arrays stay as trained). `regenerate.py` runs them;
tests/optimizers/test_pretrained_recipes.py checks the first meta-steps of
the default one. Run as a script, it meta-trains any run (`main`).
"""

import dataclasses
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
TRAIN_SCRIPT = os.path.join(REPO, "examples", "train_learned_optimizer.py")

# The meta-training commands, without --meta_steps and --model_dir (the
# recipe sets them). The bookkeeping flags (--eval_every,
# --checkpoint_every) are those of the original runs; they do not change
# the trained phi.
RUNS = {
    # The per-tensor rule with damped downward hypergradient moves ("t8").
    "t8": ("--granularity=tensor", "--init_lr=3e-3", "--init_hyper_rate=0.1",
           "--hyper_down_fraction=0.5",
           "--problems=mlp_teacher_pool,conv_small_teacher_pool,quadratic,"
           "mlp_teacher,mlp_omniglot",
           "--problem_weights=0.35,0.35,0.1,0.1,0.1", "--unroll=40",
           "--horizon=400", "--meta_lr=3e-4", "--meta_loss=mean", "--seed=0",
           "--eval_every=50", "--checkpoint_every=50"),
    # The secant heavy-ball rule on quadratics, second order ("m4").
    "m4": ("--descent=momentum", "--beta_1=0.93", "--init_lr=2",
           "--granularity=coordinate", "--problems=quadratic", "--unroll=20",
           "--horizon=200", "--meta_lr=1e-3", "--second_order", "--seed=1",
           "--eval_every=250", "--checkpoint_every=250"),
    # The normalized MLP rule (antisymmetric, Adam's per-coordinate scale)
    # by persistent ES on the small-Omniglot task family, objective: the
    # validation loss after 2,000-4,000-step runs ("pes_anti").
    "pes_anti": ("--rule_kind=normalized", "--normalize=none",
                 "--antisymmetric", "--estimator=pes",
                 "--tasks=small_omniglot", "--num_tasks=16", "--unroll=20",
                 "--horizon=2000", "--horizon_range=2000,4000",
                 "--num_particles=8", "--sigma=0.01",
                 "--meta_objective=validation", "--meta_loss=log",
                 "--meta_lr=1e-3", "--eval_tasks=4", "--eval_steps=1000",
                 "--eval_objective=validation", "--eval_every=250",
                 "--checkpoint_every=50", "--seed=0"),
    # The coordinatewise Adam-modulating rule on a mixture ("final").
    "final": ("--problems=quadratic,mlp_teacher,mlp_omniglot",
              "--problem_weights=0.5,0.25,0.25", "--unroll=20",
              "--horizon=100", "--meta_lr=1e-3", "--seed=0",
              "--eval_every=250"),
}
# pes_anti on a wider task family: half of its MLPs and convnets have layer
# normalization; with and without the parameter feature p / rms(p).
RUNS["pes_ln"] = RUNS["pes_anti"] + ("--task_layer_norm=0.5",)
RUNS["pes_ln_nop"] = RUNS["pes_ln"] + ("--noparameter_feature",)
# pes_anti on a family with patch-token classifiers (embedding tables) and
# fresh-data teacher tasks (held-out loss falls as the logits grow).
RUNS["pes_mix"] = RUNS["pes_anti"] + (
    "--task_kinds=mlp,conv,autoencoder,tokens,teacher",)
# ... and noisy regression tasks.
RUNS["pes_mix_reg"] = RUNS["pes_anti"] + (
    "--task_kinds=mlp,conv,autoencoder,tokens,teacher,regression",)
# pes_anti with two momenta (0.9, 0.99): a float of state per parameter
# less.
RUNS["pes_anti_2m"] = RUNS["pes_anti"] + ("--momentum_decays=0.9,0.99",)
# ... and with one (Adam's 0.9): two floats less.
RUNS["pes_anti_1m"] = RUNS["pes_anti"] + ("--momentum_decays=0.9",)
# ... with rank-2 teachers, whose held-out loss falls towards 0.
RUNS["pes_mix_easy"] = RUNS["pes_anti"] + (
    "--task_kinds=mlp,conv,autoencoder,tokens,easy_teacher,regression",)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Shipped weights: meta-step `step` of run `run`, config overridden.

    `commit`: None runs today's training script; a commit runs that
    commit's script and package (extracted with `git archive`), for files
    that today's code no longer reproduces.
    """
    run: str
    step: int
    config: dict = dataclasses.field(default_factory=dict)
    commit: str = None


RECIPES = {
    # t8 stopped at meta-step 50, as written (one-step hypergradient).
    "per_tensor_one_step": Recipe("t8", 50),
    # The same arrays with the 100-step hypergradient and the trust region
    # of the step-size offset (at most 10x below, 100x above the base rate;
    # -log(10), not log(1/10): they differ in the last bit).
    "per_tensor": Recipe("t8", 50, {"hyper_horizon": 100.0,
                                    "min_offset": -math.log(10.0),
                                    "max_offset": math.log(100.0)}),
    "quadratic": Recipe("m4", 6750),
    # pes_anti at meta-step 1000, chosen on the development workloads
    # (BUILD_NOTES 4.6).
    "normalized": Recipe("pes_anti", 1000),
    # Today's code changes the mlp_omniglot family (one Omniglot reader for
    # MAML and meta-training, commit 207a523), so the run is made with the
    # commit that shipped the file.
    "coordinatewise": Recipe("final", 1000,
                             commit="edff4c4aca897ed2c7880bf35e295b44c1d1e9de"),
}


def problems(run):
    """The problem families of `run`, in order; None for a run on a task
    distribution (`--tasks=`), whose problems are drawn by seed."""
    flag = next((a for a in RUNS[run] if a.startswith("--problems=")), None)
    return flag.split("=", 1)[1].split(",") if flag else None


def train_command(run, meta_steps, model_dir, extra=(), root=REPO):
    """The argv that meta-trains `run` for `meta_steps` into `model_dir`.

    `extra` flags come last, so they override the run's own. `root`: the
    source tree whose training script runs.
    """
    script = os.path.join(root, os.path.relpath(TRAIN_SCRIPT, REPO))
    return [sys.executable, script, *RUNS[run],
            f"--meta_steps={meta_steps}", f"--model_dir={model_dir}",
            *extra]


def train_env(root=REPO):
    """os.environ with `root` first on PYTHONPATH, Omniglot data set.

    The data stays this repository's ../shared/data/omniglot (unless
    KERAS_META_OMNIGLOT_DIR is set) when `root` is an extracted commit.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("KERAS_META_OMNIGLOT_DIR", os.path.join(
        REPO, "..", "shared", "data", "omniglot"))
    return env


def main(argv):
    """`python examples/pretrained/recipes.py RUN META_STEPS MODEL_DIR`
    meta-trains run RUN (of `RUNS`, shipped or not) for META_STEPS into
    MODEL_DIR; its phi is MODEL_DIR/phi_last.npz."""
    if len(argv) != 4 or argv[1] not in RUNS or not argv[2].isdigit():
        sys.exit(f"usage: {argv[0]} RUN META_STEPS MODEL_DIR, RUN one of "
                 f"{sorted(RUNS)}; got {argv[1:]}.")
    return subprocess.call(train_command(argv[1], int(argv[2]), argv[3]),
                           env=train_env())


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The shipped weights' recipes (examples/pretrained) still train the same.

Runs the first two meta-steps of a recipe through
examples/train_learned_optimizer.py, as a subprocess with the recipe's
flags, and compares phi and each step's meta-objective and meta-gradient
norm with tests/fixtures/<name>_recipe_2_steps.npz.

- `per_tensor` (the default), "short" (always run): the recipe with
  truncations of 4 steps instead of 40 (--unroll=4 --horizon=8). Same
  problem mixture, seeds, rule and meta-optimizer, so the same code paths;
  tracing a 40-step truncation takes minutes on 2 cores.
- `per_tensor`, "recipe" (set KERAS_META_FULL_RECIPE_TEST=1; minutes): the
  recipe's own truncations. Its fixture entry came from the recipe's
  command stopped after two meta-steps; the test shortens only the horizon
  (400 -> 80: the first problem instance lasts 10 meta-steps either way)
  and turns off checkpoints and in-training evaluation, none of which
  changes phi.
- `normalized`, "short": the persistent-ES recipe with 2 of its 16 task
  architectures, 2 particles, 4-step truncations of 8-16-step runs and a
  2-step evaluation of one task (evaluation does not change phi).

Each fixture was written by the code of the commit that added it; the
per_tensor recipe reproduced the shipped file byte for byte, and the
normalized one its arrays bitwise (examples/pretrained/README.md).
"""

import glob
import importlib.util
import os
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.util import event_pb2

from keras_meta.optimizers import weights_io

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
META_STEPS = 2
# Adam's first meta-updates move each coordinate by about meta_lr (3e-4)
# whatever the gradient's size, so a coordinate whose meta-gradient changes
# sign moves by more than this.
PHI_ATOL = 1e-5


def _recipes():
    spec = importlib.util.spec_from_file_location(
        "pretrained_recipes",
        os.path.join(REPO, "examples", "pretrained", "recipes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scalars(run_dir, tag):
    """The TensorBoard scalar `tag` of a run, one value per meta-step."""
    out = {}
    for path in glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(path):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == tag:
                    out[event.step] = float(tf.make_ndarray(value.tensor))
    return np.array([out[s] for s in sorted(out)])


# Flags added after the recipe's own (later flags win): fewer meta-steps,
# no checkpoints or in-training evaluation, and per case the truncation.
CASES = {
    ("per_tensor", "short"): ["--unroll=4", "--horizon=8"],
    ("per_tensor", "recipe"): ["--horizon=80"],
    ("normalized", "short"): [
        "--num_tasks=2", "--unroll=4", "--horizon=8", "--horizon_range=8,16",
        "--num_particles=2", "--eval_tasks=1", "--eval_steps=2"],
}


@pytest.mark.parametrize("name,case", sorted(CASES))
def test_recipe_first_meta_steps(name, case, omniglot_dir, tmp_path):
    if case == "recipe" and not os.environ.get("KERAS_META_FULL_RECIPE_TEST"):
        pytest.skip("minutes on 2 cores; set KERAS_META_FULL_RECIPE_TEST=1")
    recipes = _recipes()
    recipe = recipes.RECIPES[name]
    run_dir = str(tmp_path / "run")
    env = recipes.train_env()
    env["KERAS_META_OMNIGLOT_DIR"] = omniglot_dir
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = recipes.train_command(
        recipe.run, META_STEPS, run_dir,
        extra=["--eval_every=1000", "--checkpoint_every=1000",
               *CASES[(name, case)]])
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Skipping problem" not in done.stdout, done.stdout[-3000:]

    phi, config = weights_io.load_phi(os.path.join(run_dir, "phi_last.npz"))
    fixture = os.path.join(FIXTURES, f"{name}_recipe_2_steps.npz")
    with np.load(fixture) as data:
        expected = {k[len(case) + 1:]: data[k] for k in data.files
                    if k.startswith(case + "/")}
    scalars = {tag: expected.pop(tag)
               for tag in ("meta/objective", "meta/grad_norm")}
    expected = {k[len("phi/"):]: v for k, v in expected.items()}
    assert sorted(phi) == sorted(expected)
    for key in expected:
        np.testing.assert_allclose(phi[key], expected[key], rtol=0,
                                   atol=PHI_ATOL, err_msg=key)
    # The meta-objective checks the unrolled truncation; the meta-gradient's
    # norm checks its scale, which Adam's first updates do not see.
    for tag in ("meta/objective", "meta/grad_norm"):
        np.testing.assert_allclose(_scalars(run_dir, tag), scalars[tag],
                                   rtol=1e-5, err_msg=tag)
    # The recipe's config change turns this run's config into the shipped
    # file's.
    shipped_config = weights_io.load_phi(weights_io.pretrained_path(name))[1]
    changed = type(config).from_dict({**config.to_dict(), **recipe.config})
    assert changed == shipped_config


def test_recipes_script_names_the_runs_it_knows():
    recipes = _recipes()
    assert {"pes_anti", "pes_mix", "pes_mix_reg", "pes_mix_easy"} <= set(
        recipes.RUNS)
    argv = recipes.train_command("pes_mix_easy", 7, "runs/x")
    assert "--task_kinds=mlp,conv,autoencoder,tokens,easy_teacher,regression" \
        in argv and argv[-2:] == ["--meta_steps=7", "--model_dir=runs/x"]
    for bad in (["nope", "10", "d"], ["pes_mix", "ten", "d"], ["pes_mix"]):
        with pytest.raises(SystemExit, match="RUN one of .*got"):
            recipes.main(["recipes.py"] + bad)

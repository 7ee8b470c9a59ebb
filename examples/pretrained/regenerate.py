"""Regenerates shipped learned-optimizer weights files from the repository.

Each file in keras_meta/optimizers/pretrained/ is one run of
examples/train_learned_optimizer.py stopped at the shipped meta-step, with
its rule config sometimes changed afterwards (recipes.py). This script runs
that command as a subprocess, applies the config change and writes the
file under the shipped file's name:

    python examples/pretrained/regenerate.py --name=per_tensor \
        --out_dir=runs/pretrained --check

--check compares each result with the shipped file: the arrays (bitwise,
else the largest absolute difference), the rule config, and the bytes. A
phi file's bytes depend on the code that wrote it (its `__config__` lists
the RuleConfig fields of that day), so the report also says whether the
result equals the shipped file re-saved by today's writer.

Runs go to <out_dir>/runs/<run>-<step>. A finished run is reused
(per_tensor and per_tensor_one_step share one); an interrupted one resumes
from its last checkpoint, bitwise. A recipe pinned to a commit (today's
code no longer reproduces its file) runs that commit's script and package,
extracted from this repository's history with `git archive` into
<out_dir>/src-<commit>; it needs a clone with that history.
"""

import glob
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

from absl import app
from absl import flags

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recipes  # noqa: E402

if recipes.REPO not in sys.path:
    sys.path.insert(0, recipes.REPO)
from keras_meta.optimizers import weights_io  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("name", ["per_tensor"],
                  f"Shipped weights to regenerate: any of "
                  f"{sorted(recipes.RECIPES)}, or 'all'.")
flags.DEFINE_string("out_dir", "runs/pretrained",
                    "Where the .npz files (named as the shipped ones) and "
                    "the runs (<out_dir>/runs/<run>-<step>) go.")
flags.DEFINE_bool("check", False, "Compare each result with the shipped "
                  "file; exit with status 1 if the arrays or the config "
                  "differ.")


def _finished(directory, step):
    path = os.path.join(directory, "summary.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return json.load(f).get("meta_steps") == step


def source_tree(commit, out_dir):
    """This repository's files at `commit`, extracted under `out_dir`."""
    root = os.path.join(out_dir, f"src-{commit[:12]}")
    if not os.path.exists(root):
        partial = root + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        archive = subprocess.run(["git", "archive", "--format=tar", commit],
                                 cwd=recipes.REPO, check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(partial, filter="data")
        os.rename(partial, root)
    return root


def train(recipe, directory, out_dir):
    """Runs (or resumes) the recipe's meta-training; returns its seconds."""
    if _finished(directory, recipe.step):
        print(f"Reusing the finished run in {directory}.")
        return 0.0
    if recipe.commit:
        # A fresh run of that commit's script, whose flags may predate
        # checkpoints.
        root, extra = source_tree(recipe.commit, out_dir), []
        shutil.rmtree(directory, ignore_errors=True)
    else:
        root, extra = recipes.REPO, ["--keep_checkpoints=2"]
        if glob.glob(os.path.join(directory, "checkpoints", "ckpt-*.npz")):
            extra.append("--resume")
    args = recipes.train_command(recipe.run, recipe.step, directory, extra,
                                 root=root)
    os.makedirs(directory, exist_ok=True)
    log = os.path.join(directory, "train.log")
    print("Running:", " ".join(args[1:]), f"> {log}", flush=True)
    start = time.time()
    with open(log, "a") as out:
        code = subprocess.call(args, cwd=root, env=recipes.train_env(root),
                               stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"Meta-training exited with status {code}; see "
                           f"{log}.")
    return time.time() - start


def _check_problems(recipe, directory):
    """Fails if the script skipped a family (e.g. Omniglot data missing)."""
    wanted = recipes.problems(recipe.run)
    with open(os.path.join(directory, "summary.json")) as f:
        used = json.load(f)["problems"]
    if wanted is None:
        # A task distribution: every drawn task must read Omniglot.
        wanted = [name for name in used if name.endswith("_omniglot")]
    if used != wanted:
        raise RuntimeError(
            f"The run in {directory} used problems {used}; the recipe needs "
            f"{wanted} (is ../shared/data/omniglot missing?). Its phi is not "
            "the shipped file's.")


def build(name, out_dir):
    """Writes `<out_dir>/<shipped file name>`; returns (path, seconds)."""
    recipe = recipes.RECIPES[name]
    tag = f"{recipe.run}-{recipe.step}"
    if recipe.commit:
        tag += f"-{recipe.commit[:12]}"
    directory = os.path.join(out_dir, "runs", tag)
    seconds = train(recipe, directory, out_dir)
    _check_problems(recipe, directory)
    last = os.path.join(directory, "phi_last.npz")
    phi, config = weights_io.load_phi(last)
    path = os.path.join(out_dir, weights_io.PRETRAINED[name])
    if recipe.config:
        config = type(config).from_dict({**config.to_dict(), **recipe.config})
        weights_io.save_phi(path, phi, config)
    else:
        # The file as the run wrote it (a pinned commit's writer included).
        shutil.copyfile(last, path)
    return path, seconds


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def compare(name, path):
    """How the file at `path` differs from the shipped weights `name`."""
    shipped = weights_io.pretrained_path(name)
    phi, config = weights_io.load_phi(path)
    ref, ref_config = weights_io.load_phi(shipped)
    diffs = {k: float(np.max(np.abs(phi[k].astype(np.float64) - ref[k])))
             for k in ref if not np.array_equal(phi[k], ref[k])}
    with tempfile.TemporaryDirectory() as tmp:
        resaved = os.path.join(tmp, "shipped.npz")
        weights_io.save_phi(resaved, ref, ref_config)
        resaved_sha = sha256(resaved)
    return {
        "name": name, "file": path, "shipped": shipped,
        "arrays_equal": not diffs,
        "max_abs_diff": max(diffs.values(), default=0.0),
        "differing_arrays": diffs,
        "config_equal": config == ref_config,
        "bytes_equal": sha256(path) == sha256(shipped),
        "bytes_equal_to_resaved_shipped": sha256(path) == resaved_sha,
        "sha256": sha256(path), "shipped_sha256": sha256(shipped),
    }


def main(argv):
    del argv
    names = sorted(recipes.RECIPES) if FLAGS.name == ["all"] else FLAGS.name
    unknown = sorted(set(names) - set(recipes.RECIPES))
    if unknown:
        raise app.UsageError(f"Unknown --name {unknown}; expected any of "
                             f"{sorted(recipes.RECIPES)} or 'all'.")
    failed = False
    for name in names:
        path, seconds = build(name, FLAGS.out_dir)
        print(f"Wrote {path} (meta-training {seconds:.0f} s).", flush=True)
        if FLAGS.check:
            report = compare(name, path)
            print(json.dumps(report, indent=2), flush=True)
            failed |= not (report["arrays_equal"] and report["config_equal"])
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)

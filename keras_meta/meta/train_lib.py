"""The meta-training driver behind examples/train_learned_optimizer.py.

`run(...)` builds the problem mixture, meta-trains with `MetaTrainer`, shows a
`keras.utils.Progbar`, writes TensorBoard summaries (meta-loss, optimizee
loss curves of the learned rule against Adam on fixed evaluation problems,
histograms of the proposed updates) and saves phi files in `model_dir`:
`phi_last.npz` and `phi_best.npz` (best evaluation score so far).
"""

import glob
import json
import math
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from keras_meta import callbacks as km_callbacks
from keras_meta import distribute as km_distribute
from keras_meta import errors
from keras_meta import saving
from keras_meta import signals
from keras_meta.meta import baselines
from keras_meta.meta import problems as problems_lib
from keras_meta.meta import trainer as trainer_lib
from keras_meta.optimizers import lstm_rule
from keras_meta.optimizers import weights_io

EVAL_SEED = 10**6


def build_problems(names):
    """Problem families for `names`, skipping Omniglot ones without data."""
    out = []
    for name in names:
        try:
            out.append(problems_lib.make_problem(name))
        except FileNotFoundError as e:
            print(f"Skipping problem {name!r}: {e}")
    if not out:
        raise ValueError(f"No usable problem among {names}.")
    return out


def evaluate(rule, problems, steps, num_instances=2):
    """Mean log optimizee loss of `rule` on fixed evaluation instances.

    Returns:
        `(score, curves)`: score is the mean over problems and instances of
        mean_t log f(theta_t); curves maps problem name to the mean loss
        curve (numpy array of `steps + 1`).
    """
    scores, curves = [], {}
    for problem in problems:
        runs = []
        for i in range(num_instances):
            inst = problem.sample(EVAL_SEED + i)
            runs.append(trainer_lib.run_rule(rule, problem, inst, steps,
                                             seed=EVAL_SEED + i))
        runs = np.stack(runs)
        curves[problem.name] = runs.mean(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.mean(np.log(runs[:, 1:] + 1e-12))
        scores.append(s if np.isfinite(s) else float("inf"))
    return float(np.mean(scores)), curves


def save_checkpoint(directory, step, trainer, extra, keep):
    """Writes the trainer's full state and `extra` (JSON) atomically."""
    arrays, info = trainer.get_state()
    info = {"trainer": info, **extra}
    path = km_callbacks.checkpoint_path(directory, step, ".npz")

    def write(temporary):
        np.savez(temporary, __info__=np.asarray(json.dumps(info)), **arrays)

    saving.replace_atomically(path, write)
    km_callbacks.prune_checkpoints(directory, keep, ".npz")
    return path


def load_checkpoint(path):
    """`(arrays, info)` of a checkpoint written by `save_checkpoint`."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "__info__"}
        info = json.loads(str(data["__info__"]))
    return arrays, info


def run(problem_names, unroll=20, horizon=100, meta_steps=1000, meta_lr=1e-3,
        model_dir="runs/learned_optimizer", seed=0, rule=None,
        second_order=False, meta_loss="log", clip_norm=1.0, jit_compile="auto",
        eval_every=200, init_weights=None, problem_weights=None, verbose=1,
        checkpoint_every=100, keep_checkpoints=3, resume=False,
        max_consecutive_skips=20, strategy="default", tpu=None,
        profile_steps=None):
    """Meta-trains the LSTM rule and writes phi files and summaries.

    Every `checkpoint_every` meta-steps, and on SIGTERM/SIGINT, the whole
    state (phi, the meta-optimizer, the run in progress, the sampling RNG,
    the best score) goes to `model_dir/checkpoints`, atomically; a signal
    then raises `keras_meta.errors.TrainingInterrupted`. With `resume`, the
    newest checkpoint is loaded and training continues bitwise as if it had
    never stopped.

    `strategy` ("default", "mirrored", "multi_worker" or "tpu", see
    `keras_meta.distribute.make_strategy`): other than "default", each
    meta-step runs one problem instance per replica and averages their
    meta-gradients; only the chief writes to `model_dir`, and a resumed
    job keeps phi and the meta-optimizer but starts new optimization runs.

    `profile_steps=(first, last)` writes a TensorBoard profile of meta-steps
    first..last (1-based) to `model_dir/profile` (the Profile tab).

    Returns:
        dict with the paths written, the final and best evaluation scores,
        and the wall time in seconds.
    """
    distributed = None
    if strategy != "default":
        distributed = km_distribute.make_strategy(strategy, tpu)
    # Every worker reads the chief's checkpoints; only the chief writes.
    latest = km_callbacks.latest_checkpoint(
        os.path.join(model_dir, "checkpoints"), ".npz")
    model_dir = km_distribute.write_dir(model_dir, distributed)
    os.makedirs(model_dir, exist_ok=True)
    checkpoints = os.path.join(model_dir, "checkpoints")
    if latest and not resume:
        raise ValueError(
            f"{os.path.dirname(latest)} already holds checkpoints; pass "
            "--resume to continue that run or choose a new --model_dir.")
    config = lstm_rule.RuleConfig.from_dict(rule or {})
    phi0 = None
    if init_weights:
        phi0, file_cfg = weights_io.load_phi(init_weights)
        # The init_* fields only seed `init_phi`; the architecture must match.
        def architecture(c):
            return {k: v for k, v in c.to_dict().items()
                    if not k.startswith("init_")}
        if rule is not None and architecture(config) != architecture(file_cfg):
            raise ValueError(
                f"init_weights {init_weights!r} were trained for rule "
                f"{file_cfg}, but the rule asked for is {config} (e.g. pass "
                "the same --granularity, --descent, --beta_1, --hidden_size, "
                "--num_layers).")
        config = file_cfg
    problems = build_problems(problem_names)
    if problem_weights is not None:
        by_name = dict(zip(problem_names, problem_weights))
        problem_weights = [float(by_name[p.name]) for p in problems]
    mt = trainer_lib.MetaTrainer(
        problems, config=config, phi=phi0, unroll=unroll, horizon=horizon,
        meta_lr=meta_lr, clip_norm=clip_norm, second_order=second_order,
        meta_loss=meta_loss, jit_compile=jit_compile, seed=seed,
        problem_weights=problem_weights,
        max_consecutive_skips=max_consecutive_skips, strategy=distributed)
    writer = tf.summary.create_file_writer(model_dir)
    adam_rules = {p.name: baselines.Adam(trainer_lib.adam_reference_lr(p))
                  for p in problems}

    def eval_and_log(step):
        learned = baselines.Learned(mt.phi_numpy(), config)
        score, curves = evaluate(learned, problems, horizon)
        with writer.as_default():
            tf.summary.scalar("eval/score_learned", score, step=step)
            for name, curve in curves.items():
                tf.summary.scalar(f"eval/final_loss/{name}/learned",
                                  curve[-1], step=step)
        return score, curves

    # Adam curves once (they do not change).
    adam_curves = {}
    for p in problems:
        _, c = evaluate(adam_rules[p.name], [p], horizon)
        adam_curves.update(c)

    best = float("inf")
    paths = {"last": os.path.join(model_dir, "phi_last.npz"),
             "best": os.path.join(model_dir, "phi_best.npz")}
    progbar = keras.utils.Progbar(meta_steps, verbose=verbose,
                                  stateful_metrics=["objective", "loss",
                                                    "eval"])
    start = time.time()
    start_step = 0
    if resume and latest:
        arrays, info = load_checkpoint(latest)
        mt.set_state(arrays, info["trainer"])
        best, start_step = info["best"], mt.meta_steps_done
        print(f"Resuming from {latest} at meta-step {start_step}.")
        progbar.update(start_step)
    else:
        best, _ = eval_and_log(0)
        weights_io.save_phi(paths["best"], mt.phi_numpy(), config)

    def callback(i, logs):
        nonlocal best
        step = i + 1
        with writer.as_default():
            tf.summary.scalar("meta/objective", logs["objective"], step=step)
            tf.summary.scalar(f"meta/mean_loss/{logs['problem']}",
                              logs["mean_loss"], step=step)
            tf.summary.scalar("meta/grad_norm", logs["grad_norm"], step=step)
            tf.summary.scalar("meta/skipped_steps", mt.skipped_meta_steps,
                              step=step)
            if step % 50 == 0 and logs["updates"] is not None:
                tf.summary.histogram(
                    f"updates/{logs['problem']}",
                    tf.concat([tf.reshape(u, [-1]) for u in logs["updates"]],
                              0), step=step)
        values = [("objective", logs["objective"]),
                  ("loss", logs["mean_loss"])]
        if eval_every and step % eval_every == 0:
            s, _ = eval_and_log(step)
            values.append(("eval", s))
            if s < best:
                best = s
                weights_io.save_phi(paths["best"], mt.phi_numpy(), config)
            weights_io.save_phi(paths["last"], mt.phi_numpy(), config)
        progbar.update(step, values=values)

    with signals.StopRequest() as stop:
        for i in range(start_step, meta_steps):
            if profile_steps and i + 1 == profile_steps[0]:
                tf.profiler.experimental.start(
                    os.path.join(model_dir, "profile"))
            callback(i, mt.meta_step())
            if profile_steps and i + 1 == profile_steps[1]:
                tf.profiler.experimental.stop()
            step = i + 1
            if stop.signum is not None or (checkpoint_every
                                           and step % checkpoint_every == 0):
                path = save_checkpoint(checkpoints, step, mt, {"best": best},
                                       keep_checkpoints)
            if stop.signum is not None:
                raise errors.TrainingInterrupted(stop.signum, step, path)
    weights_io.save_phi(paths["last"], mt.phi_numpy(), config)
    final, curves = eval_and_log(meta_steps)
    if final < best:
        best = final
        weights_io.save_phi(paths["best"], mt.phi_numpy(), config)
    with writer.as_default():
        for name, curve in curves.items():
            for t, (lv, av) in enumerate(zip(curve, adam_curves[name])):
                tf.summary.scalar(f"curves/{name}/learned", lv, step=t)
                tf.summary.scalar(f"curves/{name}/adam", av, step=t)
    writer.flush()
    wall = time.time() - start
    summary = {
        "problems": [p.name for p in problems], "meta_steps": meta_steps,
        "unroll": unroll, "horizon": horizon, "meta_lr": meta_lr,
        "seed": seed, "rule": config.to_dict(),
        "problem_weights": problem_weights, "init_weights": init_weights, "second_order": second_order,
        "meta_loss": meta_loss, "jit_compile": mt.jit_compile,
        "final_eval_score": final, "best_eval_score": best,
        "skipped_meta_steps": mt.skipped_meta_steps, "wall_seconds": wall,
        "final_loss_learned": {k: float(v[-1]) for k, v in curves.items()},
        "final_loss_adam": {k: float(v[-1]) for k, v in adam_curves.items()},
        "paths": paths,
    }
    summary["replicas"] = (distributed.num_replicas_in_sync
                           if distributed else 1)
    saving.write_json(os.path.join(model_dir, "summary.json"), summary)
    if not km_distribute.is_chief(distributed):
        shutil.rmtree(model_dir, ignore_errors=True)
    return summary


def checkpoint_phis(run_dir):
    """Writes the phi of every checkpoint of a training run as phi files.

    Args:
        run_dir: the `model_dir` of `run` (or of
            `examples/train_learned_optimizer.py`).

    Returns:
        The paths written, in step order:
        `<run_dir>/checkpoint_phis/phi-<step>.npz`, each with the run's rule
        config, ready for `LearnedOptimizer(weights=path)` or
        `benchmarks/validate_checkpoints.py`.
    """
    _, config = weights_io.load_phi(os.path.join(run_dir, "phi_last.npz"))
    out_dir = os.path.join(run_dir, "checkpoint_phis")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for ckpt in sorted(glob.glob(os.path.join(run_dir, "checkpoints",
                                              "ckpt-*.npz"))):
        with np.load(ckpt, allow_pickle=False) as data:
            phi = {k[len("phi/"):]: np.array(data[k]) for k in data.files
                   if k.startswith("phi/")}
        path = os.path.join(out_dir,
                            os.path.basename(ckpt).replace("ckpt-", "phi-"))
        weights_io.save_phi(path, phi, config)
        paths.append(path)
    return paths

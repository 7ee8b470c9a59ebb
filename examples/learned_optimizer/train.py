"""Meta-training of the LSTM learned optimizer: the logic behind
examples/train_learned_optimizer.py.

`run(config)` builds the problem mixture, meta-trains with
`keras_meta.meta.MetaTrainer` in an owned run directory
(`keras_meta.run_dir`), shows a `keras.utils.Progbar`, writes TensorBoard
summaries (meta-loss, optimizee loss curves of the learned rule against
Adam on fixed evaluation problems, histograms of the proposed updates) and
saves phi files in `model_dir`: `phi_last.npz` and `phi_best.npz` (best
evaluation score so far).
"""

import dataclasses
import glob
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from keras_meta import callbacks as km_callbacks
from keras_meta import distribute
from keras_meta import errors
from keras_meta import run_dir
from keras_meta import saving
from keras_meta import signals
from keras_meta.rules import baselines
from keras_meta.meta import problems as problems_lib
from keras_meta.meta import task_family
from keras_meta.meta import trainer as trainer_lib
from keras_meta.rules import lstm as lstm_rule
from keras_meta.optimizers import rule_kinds
from keras_meta.optimizers import weights_io
from keras_meta.rules import normalized as normalized_rule
from keras_meta.rules.base import UpdateRule

from examples import config_flags
from examples import flag_checks
from examples.learned_optimizer import config as config_lib

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


def build_tasks(config):
    """The problems of `config.tasks` (a task distribution), or of
    `config.problems` when it is None."""
    if config.tasks is None:
        return build_problems(config.problems)
    if config.tasks == "small_omniglot":
        return task_family.sample_tasks(config.seed, config.num_tasks,
                                        kinds=config.task_kinds,
                                        layer_norm=config.task_layer_norm)
    raise ValueError(f"Unknown task distribution {config.tasks!r}.")


def evaluate(rule, problems, steps, num_instances=2, objective="train"):
    """Mean log optimizee loss of `rule` on fixed evaluation instances.

    Returns:
        `(score, curves)`: with `objective="train"` the score is the mean
        over problems and instances of mean_t log f(theta_t) (training
        minibatch losses); with `"validation"`, the mean of log of the
        final parameters' loss on held-out examples. `curves` maps problem
        name to the mean training loss curve (numpy array of `steps + 1`).
    """
    validation = objective == "validation"
    scores, curves = [], {}
    for problem in problems:
        runs, finals = [], []
        for i in range(num_instances):
            inst = problem.sample(EVAL_SEED + i)
            out = trainer_lib.run_rule(rule, problem, inst, steps,
                                       seed=EVAL_SEED + i,
                                       return_validation=validation)
            losses, final = out if validation else (out, None)
            runs.append(losses)
            finals.append(final)
        runs = np.stack(runs)
        curves[problem.name] = runs.mean(0)
        scored = np.asarray(finals) if validation else runs[:, 1:]
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.mean(np.log(scored + 1e-12))
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


CHECKPOINT_KEYS = ("trainer", "best")


def load_checkpoint(path):
    """`(arrays, info)` of a checkpoint written by `save_checkpoint`.

    Raises:
        ValueError: the file cannot be read or is not such a checkpoint;
            the message names the file.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k != "__info__"}
            info = json.loads(str(data["__info__"]))
    except Exception as e:  # zipfile.BadZipFile, OSError, KeyError, ...
        raise ValueError(
            f"Could not read meta-training checkpoint {path}: "
            f"{type(e).__name__}: {e}. Expected an .npz written by "
            "save_checkpoint (an '__info__' entry and the trainer's "
            "arrays).") from e
    missing = [k for k in CHECKPOINT_KEYS
               if not isinstance(info, dict) or k not in info]
    if missing or not any(k.startswith("phi/") for k in arrays):
        raise ValueError(
            f"{path} is not a meta-training checkpoint: its '__info__' "
            f"lacks {missing} or it holds no 'phi/' arrays.")
    return arrays, info


def rule_config(rule, init_weights):
    """`(RuleConfig, initial phi or None)` of a run.

    Raises:
        ValueError: `rule` (a dict, or None for "as in the file") asks for
            another architecture than `init_weights` was trained for.
    """
    config = lstm_rule.RuleConfig.from_dict(rule or {})
    if not init_weights:
        return config, None
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
    return file_cfg, phi0


# The NormalizedConfig fields that --rule_kind=normalized sets from flags.
NORMALIZED_FLAGS = ("normalize", "antisymmetric", "parameter_feature",
                    "momentum_decays")


def build_rule(config):
    """`(rule config, initial phi or None, UpdateRule)` of a run's
    `rule_kind`.

    Raises:
        ValueError: `init_weights` holds another kind of rule.
    """
    if config.rule_kind == "lstm":
        cfg, phi0 = rule_config(config.rule, config.init_weights)
    elif config.init_weights:
        phi0, cfg = weights_io.load_phi(config.init_weights)
        if not isinstance(cfg, normalized_rule.NormalizedConfig):
            raise ValueError(
                f"init_weights {config.init_weights!r} hold a "
                f"{rule_kinds.kind_of(cfg)} rule, not a normalized one.")
        for name in NORMALIZED_FLAGS:
            if getattr(cfg, name) != getattr(config, name):
                raise ValueError(
                    f"init_weights {config.init_weights!r} hold a rule with "
                    f"{name}={getattr(cfg, name)!r}, but --{name}="
                    f"{getattr(config, name)!r} was given.")
    else:
        cfg = normalized_rule.NormalizedConfig(
            **{name: getattr(config, name) for name in NORMALIZED_FLAGS})
        phi0 = None
    return cfg, phi0, rule_kinds.make_rule(cfg)


class FixedMetaParams(UpdateRule):
    """`rule` with fixed meta-parameters `phi` (`meta_params` ignored), for
    evaluation with `run_rule`."""

    def __init__(self, rule, phi):
        self.rule = rule
        self.phi = {k: tf.convert_to_tensor(v) for k, v in phi.items()}

    def init(self, values):
        return self.rule.init(values)

    def update(self, meta_params, grads, state, values, step):
        phi = {k: tf.cast(v, grads[0].dtype) for k, v in self.phi.items()}
        return self.rule.update(phi, grads, state, values, step)


def fixed_rule(rule, phi):
    """The rule of a run with fixed phi (`baselines.Learned` for the LSTM
    rule, as evaluations always used)."""
    if isinstance(rule, lstm_rule.LSTMRule):
        return baselines.Learned(phi, rule.config)
    return FixedMetaParams(rule, phi)


class _MetaTraining:
    """One meta-training run in `model_dir`: the trainer, its summaries,
    its phi files and the best evaluation score so far."""

    def __init__(self, config, model_dir, strategy, rule, phi0, update_rule):
        self.config = config
        self.rule = rule
        rule = update_rule
        self.problems = build_tasks(config)
        self.eval_problems = self.problems[:config.eval_tasks]
        self.eval_steps = config.eval_steps or config.horizon
        weights = config.problem_weights if config.tasks is None else None
        if weights is not None:
            by_name = dict(zip(config.problems, weights))
            weights = [float(by_name[p.name]) for p in self.problems]
        self.problem_weights = weights
        self.trainer = trainer_lib.MetaTrainer(
            self.problems, rule=rule, phi=phi0, unroll=config.unroll,
            horizon=config.horizon, meta_lr=config.meta_lr,
            clip_norm=config.clip_norm, second_order=config.second_order,
            meta_loss=config.meta_loss,
            jit_compile=("auto" if config.jit_compile is None
                         else config.jit_compile),
            seed=config.seed, problem_weights=weights,
            max_consecutive_skips=config.max_consecutive_skips,
            strategy=strategy, estimator=config.estimator,
            num_particles=config.num_particles, sigma=config.sigma,
            horizon_range=config.horizon_range,
            vectorize=config.vectorize_pairs,
            meta_objective=config.meta_objective)
        self.model_dir = model_dir
        self.writer = tf.summary.create_file_writer(model_dir)
        self.paths = {"last": os.path.join(model_dir, "phi_last.npz"),
                      "best": os.path.join(model_dir, "phi_best.npz")}
        # Adam's curves once (they do not change).
        self.adam_curves = {}
        for p in self.eval_problems:
            adam = baselines.Adam(trainer_lib.adam_reference_lr(p))
            self.adam_curves.update(evaluate(adam, [p], self.eval_steps)[1])
        self.best = float("inf")

    def save_phi(self, which):
        weights_io.save_phi(self.paths[which], self.trainer.phi_numpy(),
                            self.rule)

    def evaluate_and_log(self, step):
        learned = fixed_rule(self.trainer.rule, self.trainer.phi_numpy())
        score, curves = evaluate(learned, self.eval_problems,
                                 self.eval_steps,
                                 objective=self.config.eval_objective)
        with self.writer.as_default():
            tf.summary.scalar("eval/score_learned", score, step=step)
            for name, curve in curves.items():
                tf.summary.scalar(f"eval/final_loss/{name}/learned",
                                  curve[-1], step=step)
        return score, curves

    def log_step(self, step, logs):
        """Summaries of meta-step `step`; `[(name, value)]` for the bar."""
        with self.writer.as_default():
            tf.summary.scalar("meta/objective", logs["objective"], step=step)
            tf.summary.scalar(f"meta/mean_loss/{logs['problem']}",
                              logs["mean_loss"], step=step)
            tf.summary.scalar("meta/grad_norm", logs["grad_norm"], step=step)
            tf.summary.scalar("meta/skipped_steps",
                              self.trainer.skipped_meta_steps, step=step)
            if step % 50 == 0 and logs["updates"] is not None:
                tf.summary.histogram(
                    f"updates/{logs['problem']}",
                    tf.concat([tf.reshape(u, [-1]) for u in logs["updates"]],
                              0), step=step)
        values = [("objective", logs["objective"]),
                  ("loss", logs["mean_loss"])]
        every = self.config.eval_every
        if every and step % every == 0:
            s, _ = self.evaluate_and_log(step)
            values.append(("eval", s))
            if s < self.best:
                self.best = s
                self.save_phi("best")
            self.save_phi("last")
        return values

    def start(self, directory):
        """The first meta-step to run: after the newest checkpoint of
        `directory` that loads, if any; else 0, after evaluating the
        initial rule.

        Raises:
            ValueError: `meta_steps` is below the checkpoint's step.
        """
        if directory.latest_checkpoint:
            path, info = directory.load_checkpoint(self._restore)
            self.best = info["best"]
            step = self.trainer.meta_steps_done
            flag_checks.not_below_done("meta_steps", self.config.meta_steps,
                                       step)
            print(f"Resuming from {path} at meta-step {step}.")
            return step
        self.best, _ = self.evaluate_and_log(0)
        self.save_phi("best")
        return 0

    def _restore(self, path):
        arrays, info = load_checkpoint(path)
        try:
            self.trainer.set_state(arrays, info["trainer"])
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ValueError(
                f"{path} does not fit this run's trainer: "
                f"{type(e).__name__}: {e}") from e
        return info

    def train(self, start_step, checkpoints, progbar):
        """Meta-steps `start_step` to `meta_steps`, checkpointing.

        Raises:
            keras_meta.errors.TrainingInterrupted: on SIGTERM/SIGINT, after
                the checkpoint.
        """
        c = self.config
        profile = c.profile_steps if c.profile else None
        with signals.StopRequest() as stop:
            for i in range(start_step, c.meta_steps):
                if profile and i + 1 == profile[0]:
                    tf.profiler.experimental.start(
                        os.path.join(self.model_dir, "profile"))
                logs = self.trainer.meta_step()
                progbar.update(i + 1, values=self.log_step(i + 1, logs))
                if profile and i + 1 == profile[1]:
                    tf.profiler.experimental.stop()
                step = i + 1
                if stop.signum is not None or (
                        c.checkpoint_every and step % c.checkpoint_every == 0):
                    path = save_checkpoint(checkpoints, step, self.trainer,
                                           {"best": self.best},
                                           c.keep_checkpoints)
                if stop.signum is not None:
                    raise errors.TrainingInterrupted(stop.signum, step, path)

    def finish(self):
        """Final phi files, evaluation and curves; `(final score, curves)`."""
        self.save_phi("last")
        final, curves = self.evaluate_and_log(self.config.meta_steps)
        if final < self.best:
            self.best = final
            self.save_phi("best")
        with self.writer.as_default():
            for name, curve in curves.items():
                adam = self.adam_curves[name]
                for t, (lv, av) in enumerate(zip(curve, adam)):
                    tf.summary.scalar(f"curves/{name}/learned", lv, step=t)
                    tf.summary.scalar(f"curves/{name}/adam", av, step=t)
        self.writer.flush()
        return final, curves

    def summary(self, final, curves, wall, replicas):
        c = self.config
        return {
            "problems": [p.name for p in self.problems],
            "meta_steps": c.meta_steps, "unroll": c.unroll,
            "horizon": c.horizon, "meta_lr": c.meta_lr, "seed": c.seed,
            "rule": self.rule.to_dict(),
            "problem_weights": self.problem_weights,
            "init_weights": c.init_weights, "second_order": c.second_order,
            "meta_loss": c.meta_loss, "jit_compile": self.trainer.jit_compile,
            "rule_kind": c.rule_kind, "estimator": c.estimator, "num_particles": c.num_particles,
            "sigma": c.sigma, "horizon_range": c.horizon_range,
            "tasks": c.tasks, "num_tasks": c.num_tasks,
            "meta_objective": c.meta_objective,
            "eval_objective": c.eval_objective,
            "final_eval_score": final, "best_eval_score": self.best,
            "skipped_meta_steps": self.trainer.skipped_meta_steps,
            "wall_seconds": wall,
            "final_loss_learned": {k: float(v[-1]) for k, v in curves.items()},
            "final_loss_adam": {k: float(v[-1])
                                for k, v in self.adam_curves.items()},
            "paths": self.paths,
            "replicas": replicas,
        }


def run(config):
    """Meta-trains the LSTM rule that `config` describes; writes phi files
    and summaries.

    The run owns `model_dir` while it runs (a second run there is refused).
    Every `checkpoint_every` meta-steps, and on SIGTERM/SIGINT, the whole
    state (phi, the meta-optimizer, the run in progress, the sampling RNG,
    the best score) goes to `model_dir/checkpoints`, atomically; a signal
    then raises `keras_meta.errors.TrainingInterrupted`. With `resume`, the
    newest checkpoint is loaded and training continues bitwise as if it had
    never stopped; without it, a directory with checkpoints is refused.
    The settings (the rule's included) are saved beside the checkpoints; a
    resume that changes one outside `config.MAY_CHANGE_ON_RESUME` is
    refused (`keras_meta.run_dir.ResumeRefused`) before anything is
    loaded, allowed changes are listed in `summary["resumes"]`, and a
    damaged checkpoint is skipped for the newest intact one. Every setting
    is checked before the first meta-step.

    `strategy` other than "default" (see `keras_meta.distribute`): each
    meta-step runs one problem instance per replica and averages their
    meta-gradients; only the chief writes to `model_dir`, and a resumed
    job keeps phi and the meta-optimizer but starts new optimization runs.

    With `profile`, meta-steps `profile_steps[0]..[1]` (1-based) are
    profiled to `model_dir/profile` (TensorBoard's Profile tab).

    Returns:
        dict with the paths written, the final and best evaluation scores,
        and the wall time in seconds; also written to
        `model_dir/summary.json`.
    """
    config_lib.check_values(config, tuple(problems_lib.FAMILIES))
    rule, phi0, update_rule = build_rule(config)
    strategy = None
    if config.strategy != "default":
        strategy = distribute.make_strategy(config.strategy, config.tpu)
    settings = {k: v for k, v in dataclasses.asdict(config).items()
                if k != "rule"}
    settings.update(rule.to_dict())
    with run_dir.RunDirectory(
            config.model_dir, resume=config.resume, strategy=strategy,
            checkpoint_ext=".npz", config=settings,
            may_change=config_lib.MAY_CHANGE_ON_RESUME,
            # Rule fields newer than a run's record compare as defaults.
            defaults={**type(rule)().to_dict(),
                      **config_flags.defaults(config_lib.Config)},
    ) as directory:
        model_dir = directory.write_path
        session = _MetaTraining(config, model_dir, strategy, rule, phi0,
                                update_rule)
        progbar = keras.utils.Progbar(
            config.meta_steps, verbose=config.verbose,
            stateful_metrics=["objective", "loss", "eval"])
        start = time.time()
        start_step = session.start(directory)
        resumes = directory.record_config(start_step)
        if start_step:
            progbar.update(start_step)
        session.train(start_step, directory.checkpoints, progbar)
        final, curves = session.finish()
        summary = session.summary(
            final, curves, time.time() - start,
            strategy.num_replicas_in_sync if strategy else 1)
        summary["resumes"] = resumes
        saving.write_json(os.path.join(model_dir, "summary.json"), summary)
        return summary


def checkpoint_phis(run_dir_path):
    """Writes the phi of every checkpoint of a training run as phi files.

    Args:
        run_dir_path: the `model_dir` of `run` (or of
            `examples/train_learned_optimizer.py`).

    Returns:
        The paths written, in step order:
        `<run_dir_path>/checkpoint_phis/phi-<step>.npz`, each with the
        run's rule config, ready for `LearnedOptimizer(weights=path)` or
        `benchmarks/validate_checkpoints.py`.
    """
    _, config = weights_io.load_phi(os.path.join(run_dir_path,
                                                 "phi_last.npz"))
    out_dir = os.path.join(run_dir_path, "checkpoint_phis")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for ckpt in sorted(glob.glob(os.path.join(run_dir_path, "checkpoints",
                                              "ckpt-*.npz"))):
        arrays, _ = load_checkpoint(ckpt)
        phi = {k[len("phi/"):]: np.array(v) for k, v in arrays.items()
               if k.startswith("phi/")}
        path = os.path.join(out_dir,
                            os.path.basename(ckpt).replace("ckpt-", "phi-"))
        weights_io.save_phi(path, phi, config)
        paths.append(path)
    return paths

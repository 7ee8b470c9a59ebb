"""Meta-train MAML (or a variant) on sinusoid regression or Omniglot.

The logic behind examples/train_maml.py. A task family (`tasks`) supplies
the network, loss, episode streams and evaluation; `run` does the rest:
training with checkpoints and resume in an owned run directory
(`keras_meta.run_dir`), TensorBoard, the saved model and the final
held-out evaluation.
"""

import dataclasses
import json
import os
import time

import keras

import keras_meta
from keras_meta import callbacks as km_callbacks
from keras_meta import distribute
from keras_meta import errors
from keras_meta import run_dir
from keras_meta import saving

from examples import flag_checks
from examples.maml import config as config_lib
from examples.maml import learners
from examples.maml import tasks


def build_maml(config, task):
    """The compiled MAML variant (or `--learner`) that `config` names
    around the task's net."""
    if config.learner != "maml":
        return learners.build(config, task)
    cls = {
        "maml": keras_meta.MAML,
        "meta_sgd": keras_meta.MetaSGD,
        "maml_plus_plus": keras_meta.MAMLPlusPlus,
        "anil": keras_meta.ANIL,
        "proto_maml": keras_meta.ProtoMAML,
    }[config.variant]
    maml = cls(
        task.model(),
        inner_learning_rate=task.inner_learning_rate(),
        inner_steps=config.inner_steps,
        first_order=config.first_order,
        eval_inner_steps=config.eval_inner_steps,
        inner_optimizer=config.inner_optimizer,
        inner_guard=config.inner_guard or None,  # 0: off
        zeroed_layers=True if config.zero_head else None,
        **_meta_loss_and_plus_plus(config),
    )
    maml.compile(
        optimizer=keras.optimizers.Adam(config.meta_lr,
                                        clipnorm=config.meta_clipnorm),
        loss=task.loss,
        metrics=list(task.metrics),
        jit_compile=config.jit_compile,
        steps_per_execution=config.steps_per_execution,
    )
    return maml


def _meta_loss_and_plus_plus(config):
    """The constructor arguments of --multi_step_loss / --step_weights and
    of the MAML++ options that were set."""
    kwargs = {}
    if config.step_weights is not None:
        kwargs["multi_step_loss"] = [float(w) for w in config.step_weights]
    elif config.multi_step_loss is not None:
        kwargs["multi_step_loss"] = config.multi_step_loss
    if config.per_step_bn:
        kwargs.update(per_step_bn_statistics=True, per_step_bn_weights=True)
    for name in ("first_order_steps", "cosine_decay_steps"):
        if getattr(config, name) is not None:
            kwargs[name] = getattr(config, name)
    return kwargs


def batches_consumed(maml):
    """Episode batches a (resumed) MAML has trained on: its optimizer's
    steps plus the skipped non-finite steps, which consumed a batch each."""
    skipped = getattr(maml, "skipped_steps", None)
    return int(maml.optimizer.iterations.numpy()) + (
        0 if skipped is None else int(skipped.numpy()))


def _restore_or_build(config, task, strategy, directory):
    """`(maml, start_step)`: from the newest checkpoint of `directory` that
    loads (older ones are tried when it is damaged), else new.

    Raises:
        ValueError: `--train_steps` is below the steps the checkpoint holds.
    """
    with strategy.scope():
        if directory.latest_checkpoint:
            path, maml = directory.load_checkpoint(keras.models.load_model)
            start_step = batches_consumed(maml)
            flag_checks.not_below_done("train_steps", config.train_steps,
                                       start_step)
            print(f"Resuming from {path} at step {start_step}.")
            return maml, start_step
        return build_maml(config, task), 0


def _callbacks(config, task, checkpoints, start_step):
    """`(checkpointer, callbacks)` of the training run."""
    every = max(config.steps_per_epoch, config.checkpoint_every
                // config.steps_per_epoch * config.steps_per_epoch)
    logs_dir = os.path.join(config.model_dir, "logs")
    checkpointer = km_callbacks.PeriodicCheckpoint(
        checkpoints, every, config.keep_checkpoints)
    callbacks = [
        checkpointer,
        # With `profile`, a TensorBoard profile of train-function calls
        # profile_batches[0]..[1] (each runs steps_per_execution steps).
        km_callbacks.TensorBoard(
            logs_dir, profile_batch=(tuple(config.profile_batches)
                                     if config.profile else 0)),
    ]
    if config.learner == "maml":
        callbacks.append(km_callbacks.InnerOptimizerSummary(
            os.path.join(logs_dir, "inner_optimizer"),
            episode=next(iter(task.validation_episodes()))))
    if config.max_train_minutes is not None:
        callbacks.append(
            km_callbacks.TrainingTimeLimit(60 * config.max_train_minutes))
    example = task.example_episode()
    if example is not None and not start_step:
        callbacks.append(km_callbacks.EpisodeImageSummary(
            os.path.join(logs_dir, "episodes"), example))
    return checkpointer, callbacks


def _train(maml, task, config, checkpoints, start_step):
    """Fits from `start_step` to `config.train_steps`, in whole epochs after
    finishing an epoch a signal cut short.

    Raises:
        keras_meta.errors.TrainingInterrupted: on SIGTERM/SIGINT, after
            the checkpoint.
    """
    checkpointer, callbacks = _callbacks(config, task, checkpoints,
                                         start_step)
    epochs = -(-config.train_steps // config.steps_per_epoch)

    def fit(first_step, epoch, steps_per_epoch, epochs):
        maml.fit(
            learners.train_episodes(config, task, first_step),
            initial_epoch=epoch,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=task.validation_episodes(),
            validation_steps=4,
            callbacks=callbacks,
            verbose=config.verbose,
        )
        if checkpointer.interrupted_by is not None:
            step = int(maml.optimizer.iterations.numpy())
            raise errors.TrainingInterrupted(
                checkpointer.interrupted_by, step,
                km_callbacks.checkpoint_path(checkpoints, step))

    spe = config.steps_per_epoch
    epoch, into_epoch = divmod(start_step, spe)
    if into_epoch and epoch < epochs:
        # Stopped mid-epoch (by a signal): finish that epoch first.
        fit(start_step, epoch, spe - into_epoch, epoch + 1)
        epoch += 1
    if epoch < epochs:
        fit(epoch * spe, epoch, spe, epochs)


def _run_in(directory, config, strategy):
    """Trains, saves, evaluates and writes results in an owned directory."""
    keras.utils.set_random_seed(config.seed)
    task = tasks.make_task(config)
    task.check()
    maml, start_step = _restore_or_build(config, task, strategy, directory)
    learners.apply_evaluation_settings(config, maml)
    resumes = directory.record_config(start_step)
    start = time.time()
    _train(maml, task, config, directory.checkpoints, start_step)
    train_seconds = time.time() - start
    model_path = os.path.join(config.model_dir, "model.keras")
    saving.save_model(maml, model_path)

    results = dict(
        _evaluation(config, task, maml, model_path),
        train_seconds=train_seconds,
        meta_steps=int(maml.optimizer.iterations.numpy()),
    )
    results["replicas"] = strategy.num_replicas_in_sync
    results["resumes"] = resumes
    saving.write_json(os.path.join(config.model_dir, "results.json"), results)
    results["formatted"] = task.format(results["table"])
    return results


def _evaluation(config, task, learner, model_path):
    """The held-out evaluation table of `learner` and its bookkeeping."""
    start = time.time()
    table = learners.table_rows(
        config, task.table(learners.for_table(config, learner)))
    return dict(config=dataclasses.asdict(config), table=table,
                metric=task.metric_name, eval_seconds=time.time() - start,
                model_path=model_path)


def run(config):
    """Meta-trains, saves `model_dir/model.keras`, evaluates and reports.

    The run owns `model_dir` while it runs (`keras_meta.run_dir`): a second
    run on the same directory is refused. With `config.resume`, training
    continues from the newest checkpoint in `model_dir/checkpoints` (model,
    optimizer and step count), and the episode stream continues where it
    was, so the result is bitwise the one of an uninterrupted run; without
    it, a directory that holds checkpoints is refused. The configuration
    is saved beside the checkpoints; a resume that changes a setting
    outside `config_lib.MAY_CHANGE_ON_RESUME` is refused
    (`keras_meta.run_dir.ResumeRefused`) before anything is loaded, and
    the allowed changes are listed in `results["resumes"]`. A damaged
    checkpoint is skipped for the newest intact one. Every flag and every
    data split is checked before the first step. SIGTERM or SIGINT
    during training writes a checkpoint and raises
    `keras_meta.errors.TrainingInterrupted`.

    Returns:
        A dict with the evaluation table, timings and paths; also written to
        `model_dir/results.json`.
    """
    config = config_lib.resolve(config)
    strategy = distribute.make_strategy(config.strategy, config.tpu)
    with run_dir.RunDirectory(
            config.model_dir, resume=config.resume, strategy=strategy,
            config=dataclasses.asdict(config),
            may_change=config_lib.MAY_CHANGE_ON_RESUME,
            defaults=config_lib.resume_defaults()) as directory:
        # Every worker reads the chief's checkpoints (a shared file system)
        # but only the chief writes to model_dir; the others to a
        # temporary directory.
        config = dataclasses.replace(config, model_dir=directory.write_path)
        return _run_in(directory, config, strategy)


# Learners whose saved network works at any number of ways (the others'
# output layer has one unit per class of the run).
ANY_WAYS = ("protonet", "finetune")


def _evaluates_at(run_config, ways):
    """Whether a run's saved network classifies `ways`-way episodes: any
    ways for `ANY_WAYS`; up to its head's units for --variant=proto_maml,
    whose head comes from the prototypes; else only the run's ways."""
    if run_config.get("learner", "maml") in ANY_WAYS:
        return True
    if run_config.get("variant") == "proto_maml":
        return ways <= run_config.get("ways")
    return ways == run_config.get("ways")


def evaluate_saved(config):
    """Evaluates a finished run's `model.keras` with `config`'s evaluation
    settings (episodes, ways, shots, steps); trains nothing.

    Returns the results dict of `run` without training numbers, also
    written to `model_dir/evaluation-<ways>way.json`.

    Raises:
        FileNotFoundError: `model_dir` holds no finished run.
        ValueError: `config.ways` differs from the run's for a learner
            whose network fixes it (MAML and its variants, Reptile; more
            than the run's for --variant=proto_maml).
    """
    config = config_lib.resolve(config)
    path = os.path.join(config.model_dir, "model.keras")
    trained_with = os.path.join(config.model_dir, "results.json")
    if not (os.path.exists(path) and os.path.exists(trained_with)):
        raise FileNotFoundError(
            f"--evaluate_only needs a finished run in {config.model_dir!r} "
            "(model.keras and results.json); found none.")
    with open(trained_with) as f:
        run_config = json.load(f)["config"]
    if not _evaluates_at(run_config, config.ways):
        raise ValueError(
            f"--evaluate_only --ways={config.ways}: the run in "
            f"{config.model_dir!r} trained a {run_config.get('learner')} "
            f"with {run_config.get('ways')} output classes; only "
            f"{' and '.join(ANY_WAYS)} evaluate at other --ways, and "
            "--variant=proto_maml at fewer.")
    keras.utils.set_random_seed(config.seed)
    task = tasks.make_task(config)
    task.check()
    learner = learners.apply_evaluation_settings(
        config, keras.models.load_model(path))
    results = _evaluation(config, task, learner, path)
    saving.write_json(os.path.join(
        config.model_dir, f"evaluation-{config.ways}way.json"), results)
    results["formatted"] = task.format(results["table"])
    return results

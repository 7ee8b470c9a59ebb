"""Meta-train MAML (or a variant) on sinusoid regression or Omniglot.

The logic behind `examples/train_maml.py`, importable and testable. A task
family supplies the network, loss, episode streams and evaluation; `run`
does the rest: training with checkpoints and resume, TensorBoard, the saved
model and the final held-out evaluation.
"""

import dataclasses
import os
import shutil
import time

import keras
import numpy as np

import keras_meta
from keras_meta import callbacks as km_callbacks
from keras_meta import distribute as km_distribute
from keras_meta import errors
from keras_meta import saving
from keras_meta import evaluation

VARIANTS = ("maml", "meta_sgd", "maml_plus_plus", "anil")
INNER_OPTIMIZERS = ("sgd", "meta_sgd", "lslr", "lstm")
# The inner rule each variant implies; `--inner_optimizer` may replace it
# for "maml" and "anil" and must agree with it for the others.
VARIANT_INNER_OPTIMIZER = {"maml": "sgd", "meta_sgd": "meta_sgd",
                           "maml_plus_plus": "lslr", "anil": "sgd"}
TASKS = ("sinusoid", "omniglot")
OFFLINE_TEST_ALPHABETS = ("Sanskrit", "Tagalog")


@dataclasses.dataclass
class Config:
    """Settings of one run. None means "the task's default" (see below)."""

    task: str = "sinusoid"
    model_dir: str = "runs/maml"
    variant: str = "maml"
    inner_optimizer: str = None
    ways: int = 5
    shots: int = None
    queries: int = None
    meta_batch_size: int = None
    train_steps: int = None
    steps_per_epoch: int = None
    inner_steps: int = None
    eval_inner_steps: int = None
    inner_lr: float = None
    meta_lr: float = 1e-3
    first_order: bool = False
    jit_compile: bool = None
    steps_per_execution: int = None
    seed: int = 0
    eval_tasks: int = 1000
    eval_shots: tuple = None
    eval_steps: tuple = None
    eval_queries: int = None
    data_dir: str = None
    test_alphabets: tuple = OFFLINE_TEST_ALPHABETS
    filters: int = 64
    checkpoint_every: int = None
    keep_checkpoints: int = 3
    resume: bool = False
    max_train_minutes: float = None
    verbose: int = 1
    strategy: str = "default"
    tpu: str = None
    profile: bool = False
    profile_batches: tuple = (3, 5)


# Defaults per task. Sinusoid: the MAML paper. Omniglot: the paper's 5-way
# and 20-way settings, except queries per class in training (the reference
# trains with as many queries as shots; evaluation uses 15).
SINUSOID_DEFAULTS = dict(
    shots=10, queries=10, meta_batch_size=25, train_steps=70000,
    steps_per_epoch=1000, inner_steps=1, eval_inner_steps=10, inner_lr=0.01,
    jit_compile=True, steps_per_execution=100, eval_shots=(5, 10, 20),
    eval_steps=(1, 10), eval_queries=100, checkpoint_every=10000,
)
OMNIGLOT_DEFAULTS = {
    5: dict(shots=1, queries=1, meta_batch_size=32, train_steps=60000,
            steps_per_epoch=100, inner_steps=1, eval_inner_steps=3,
            inner_lr=0.4, jit_compile="auto", steps_per_execution=1,
            eval_shots=None, eval_steps=None, eval_queries=15,
            checkpoint_every=500),
    20: dict(shots=1, queries=1, meta_batch_size=16, train_steps=60000,
             steps_per_epoch=100, inner_steps=5, eval_inner_steps=5,
             inner_lr=0.1, jit_compile="auto", steps_per_execution=1,
             eval_shots=None, eval_steps=None, eval_queries=15,
             checkpoint_every=500),
}


def resolve(config):
    """Fills the task's defaults into the fields left as None."""
    if config.task not in TASKS:
        raise ValueError(f"--task must be one of {TASKS}; got {config.task!r}.")
    if config.variant not in VARIANTS:
        raise ValueError(
            f"--variant must be one of {VARIANTS}; got {config.variant!r}.")
    implied = VARIANT_INNER_OPTIMIZER[config.variant]
    if config.inner_optimizer is None:
        config = dataclasses.replace(config, inner_optimizer=implied)
    elif config.inner_optimizer not in INNER_OPTIMIZERS:
        raise ValueError(
            f"--inner_optimizer must be one of {INNER_OPTIMIZERS}; got "
            f"{config.inner_optimizer!r}.")
    elif (config.variant not in ("maml", "anil")
          and config.inner_optimizer != implied):
        raise ValueError(
            f"--variant={config.variant} implies --inner_optimizer={implied}"
            f"; got --inner_optimizer={config.inner_optimizer}. Use "
            "--variant=maml with --inner_optimizer to swap the inner rule.")
    if config.strategy not in km_distribute.STRATEGIES:
        raise ValueError(f"--strategy must be one of "
                         f"{km_distribute.STRATEGIES}; got {config.strategy!r}.")
    if config.task == "sinusoid":
        defaults = SINUSOID_DEFAULTS
    else:
        defaults = OMNIGLOT_DEFAULTS[20 if config.ways >= 20 else 5]
    if config.strategy != "default":
        # XLA on the whole step fails under MirroredStrategy (variables on
        # other devices); TPUStrategy compiles with XLA anyway. Keras 3.15
        # fails with steps_per_execution > 1 under MirroredStrategy (an
        # unfed placeholder in its while_loop, plain Keras models too).
        defaults = dict(defaults, jit_compile=False, steps_per_execution=1)
    filled = {k: (defaults[k] if getattr(config, k) is None and k in defaults
                  else getattr(config, k))
              for k in (f.name for f in dataclasses.fields(config))}
    if config.task == "omniglot":
        filled["eval_shots"] = filled["eval_shots"] or (filled["shots"],)
        filled["eval_steps"] = filled["eval_steps"] or (
            filled["eval_inner_steps"],)
    return Config(**filled)


class SinusoidTask:
    """Sinusoid regression (Finn et al. 2017, section 5.1)."""

    loss = "mse"
    metrics = ()
    metric_name = "query MSE"

    def __init__(self, config):
        self.config = config

    def model(self):
        return keras.Sequential([
            keras.Input((1,)),
            keras.layers.Dense(40, activation="relu"),
            keras.layers.Dense(40, activation="relu"),
            keras.layers.Dense(1),
        ], name="sinusoid_regressor")

    def inner_learning_rate(self):
        return self.config.inner_lr

    def train_episodes(self, skip_batches=0):
        c = self.config
        return keras_meta.data.sinusoid(
            shots=c.shots, queries=c.queries,
            meta_batch_size=c.meta_batch_size, seed=c.seed,
            skip_batches=skip_batches)

    def validation_episodes(self):
        c = self.config
        return keras_meta.data.sinusoid(
            shots=c.shots, queries=c.queries,
            meta_batch_size=c.meta_batch_size, seed=20_000 + c.seed)

    def test_episodes(self, shots):
        return keras_meta.data.sinusoid(
            shots=shots, queries=self.config.eval_queries,
            meta_batch_size=250, seed=10_000 + self.config.seed)

    def table(self, maml):
        c = self.config
        return evaluation.few_shot_table(
            maml, self.test_episodes, shots=c.eval_shots, steps=c.eval_steps,
            num_tasks=c.eval_tasks)

    def format(self, rows):
        return evaluation.format_table(rows, "query MSE")

    def example_episode(self):
        return None


class OmniglotTask:
    """N-way K-shot Omniglot, classes split by alphabet.

    Offline (`data_dir` holds the official zips): the test classes are the
    alphabets in `test_alphabets`; 15% of the other characters are held
    out for validation; the rest train. Through TFDS (no `data_dir`): the
    reference split, 1,100 train, 100 validation and the rest test
    characters in a fixed random order. Training augments with 90-degree
    rotations as new classes; evaluation uses unrotated held-out classes.
    """

    metric_name = "query accuracy"

    def __init__(self, config):
        self.config = config
        self.loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True)
        self.metrics = ("accuracy",)
        self.train, self.validation, self.test = self._split()

    def _split(self):
        c = self.config
        rng = np.random.RandomState(1)
        if c.data_dir:
            data = keras_meta.data.load_omniglot(c.data_dir)
            unknown = sorted(set(c.test_alphabets) - set(data.groups))
            if unknown:
                raise ValueError(
                    f"--test_alphabets names {unknown}, not in {c.data_dir}; "
                    f"alphabets there: {data.groups}.")
            test = data.subset(groups=c.test_alphabets)
            rest = data.subset(groups=[g for g in data.groups
                                       if g not in c.test_alphabets])
            order = rng.permutation(rest.num_classes)
            cut = int(round(0.15 * rest.num_classes))
            return (rest.subset(classes=order[cut:]),
                    rest.subset(classes=order[:cut]), test)
        parts = [keras_meta.data.load_tfds("omniglot", split=s,
                                           image_size=(28, 28))
                 for s in ("train", "test")]
        images = np.concatenate([p.images for p in parts])
        offset = parts[0].num_classes
        labels = np.concatenate([parts[0].labels, parts[1].labels + offset])
        data = keras_meta.data.ImageClasses(
            images, labels, parts[0].class_names + parts[1].class_names,
            (parts[0].class_groups or []) + (parts[1].class_groups or []))
        order = rng.permutation(data.num_classes)
        return (data.subset(classes=order[:1100]),
                data.subset(classes=order[1100:1200]),
                data.subset(classes=order[1200:]))

    def model(self):
        return keras_meta.models.conv4_classifier(
            self.config.ways, filters=self.config.filters)

    def inner_learning_rate(self):
        # The reference sums the inner cross-entropy over the N classes
        # (divides by K only); a Keras loss averages over all N*K examples,
        # so the same step needs N times the rate.
        return self.config.inner_lr * self.config.ways

    def _episodes(self, classes, queries, seed, rotations, skip_batches=0,
                  meta_batch_size=None, shots=None):
        c = self.config
        return keras_meta.data.episodes(
            classes, ways=c.ways, shots=shots or c.shots, queries=queries,
            meta_batch_size=meta_batch_size or c.meta_batch_size, seed=seed,
            rotations=rotations, skip_batches=skip_batches)

    def train_episodes(self, skip_batches=0):
        return self._episodes(self.train, self.config.queries,
                              self.config.seed, True, skip_batches)

    def validation_episodes(self):
        return self._episodes(self.validation, self.config.eval_queries,
                              20_000 + self.config.seed, False)

    def test_episodes(self, shots):
        return self._episodes(self.test, self.config.eval_queries,
                              10_000 + self.config.seed, False,
                              meta_batch_size=50, shots=shots)

    def table(self, maml):
        c = self.config
        rows = []
        for k in c.eval_shots:
            for s in c.eval_steps:
                accuracy = evaluation.adaptation_results(
                    maml, self.test_episodes(k), c.eval_tasks, s)["accuracy"]
                mean, ci = evaluation.mean_confidence_interval(accuracy)
                rows.append(dict(ways=c.ways, shots=k, steps=s, mean=mean,
                                 ci=ci, tasks=c.eval_tasks))
        return rows

    def format(self, rows):
        return evaluation.format_table(rows, "query accuracy %", scale=100,
                                       digits=2)

    def example_episode(self):
        return next(iter(self.train_episodes()))


def make_task(config):
    return (SinusoidTask if config.task == "sinusoid" else OmniglotTask)(
        config)


def build_maml(config, task):
    """The compiled MAML variant that `config` names around the task's net."""
    cls = {
        "maml": keras_meta.MAML,
        "meta_sgd": keras_meta.MetaSGD,
        "maml_plus_plus": keras_meta.MAMLPlusPlus,
        "anil": keras_meta.ANIL,
    }[config.variant]
    maml = cls(
        task.model(),
        inner_learning_rate=task.inner_learning_rate(),
        inner_steps=config.inner_steps,
        first_order=config.first_order,
        eval_inner_steps=config.eval_inner_steps,
        inner_optimizer=config.inner_optimizer,
    )
    maml.compile(
        optimizer=keras.optimizers.Adam(config.meta_lr),
        loss=task.loss,
        metrics=list(task.metrics),
        jit_compile=config.jit_compile,
        steps_per_execution=config.steps_per_execution,
    )
    return maml


def batches_consumed(maml):
    """Episode batches a (resumed) MAML has trained on: its optimizer's
    steps plus the skipped non-finite steps, which consumed a batch each."""
    return int(maml.optimizer.iterations.numpy()) + int(
        maml.skipped_steps.numpy())


def run(config):
    """Meta-trains, saves `model_dir/model.keras`, evaluates and reports.

    With `config.resume`, training continues from the newest checkpoint in
    `model_dir/checkpoints` (model, optimizer and step count), and the
    episode stream continues where it was, so the result is bitwise the
    one of an uninterrupted run. SIGTERM or SIGINT during training writes a
    checkpoint and raises `keras_meta.errors.TrainingInterrupted`.

    Returns:
        A dict with the evaluation table, timings and paths; also written to
        `model_dir/results.json`.
    """
    config = resolve(config)
    strategy = km_distribute.make_strategy(config.strategy, config.tpu)
    # Every worker reads the chief's checkpoints (a shared file system) but
    # only the chief writes to model_dir; the others to a temporary dir.
    shared_checkpoints = os.path.join(config.model_dir, "checkpoints")
    config = dataclasses.replace(
        config, model_dir=km_distribute.write_dir(config.model_dir, strategy))
    os.makedirs(config.model_dir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    task = make_task(config)
    checkpoints = os.path.join(config.model_dir, "checkpoints")
    latest = km_callbacks.latest_checkpoint(shared_checkpoints)
    with strategy.scope():
        if config.resume and latest:
            maml = keras.models.load_model(latest)
            start_step = batches_consumed(maml)
            print(f"Resuming from {latest} at step {start_step}.")
        else:
            if latest and not config.resume:
                raise ValueError(
                    f"{shared_checkpoints} already holds checkpoints; pass "
                    "--resume to continue that run or choose a new "
                    "--model_dir.")
            maml = build_maml(config, task)
            start_step = 0
    epochs = max(1, -(-config.train_steps // config.steps_per_epoch))
    every = max(config.steps_per_epoch, config.checkpoint_every
                // config.steps_per_epoch * config.steps_per_epoch)
    logs_dir = os.path.join(config.model_dir, "logs")
    checkpointer = km_callbacks.PeriodicCheckpoint(
        checkpoints, every, config.keep_checkpoints)
    callbacks = [
        checkpointer,
        # With `profile`, a TensorBoard profile of train-function calls
        # profile_batches[0]..[1] (each runs steps_per_execution steps).
        keras.callbacks.TensorBoard(
            logs_dir, profile_batch=(tuple(config.profile_batches)
                                     if config.profile else 0)),
        km_callbacks.InnerOptimizerSummary(
            os.path.join(logs_dir, "inner_optimizer"),
            episode=next(iter(task.validation_episodes()))),
    ]
    if config.max_train_minutes:
        callbacks.append(
            km_callbacks.TrainingTimeLimit(60 * config.max_train_minutes))
    example = task.example_episode()
    if example is not None and not start_step:
        callbacks.append(km_callbacks.EpisodeImageSummary(
            os.path.join(logs_dir, "episodes"), example))
    start = time.time()

    def fit(first_step, epoch, steps_per_epoch, epochs):
        maml.fit(
            task.train_episodes(skip_batches=first_step),
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
    train_seconds = time.time() - start
    model_path = os.path.join(config.model_dir, "model.keras")
    saving.save_model(maml, model_path)

    start = time.time()
    table = task.table(maml)
    results = dict(
        config=dataclasses.asdict(config),
        table=table,
        metric=task.metric_name,
        train_seconds=train_seconds,
        eval_seconds=time.time() - start,
        meta_steps=int(maml.optimizer.iterations.numpy()),
        model_path=model_path,
    )
    results["replicas"] = strategy.num_replicas_in_sync
    saving.write_json(os.path.join(config.model_dir, "results.json"), results)
    results["formatted"] = task.format(table)
    if not km_distribute.is_chief(strategy):
        shutil.rmtree(config.model_dir, ignore_errors=True)
    return results

"""Meta-train MAML (or a variant) on sinusoid regression and evaluate it.

The logic behind `examples/train_maml.py`, importable and testable.
"""

import dataclasses
import json
import os
import time

import keras

import keras_meta
from keras_meta import callbacks as km_callbacks
from keras_meta import evaluation

VARIANTS = ("maml", "meta_sgd", "maml_plus_plus", "anil")


@dataclasses.dataclass
class Config:
    """Settings of one sinusoid run; the script's flags map onto these."""

    model_dir: str = "runs/maml_sinusoid"
    variant: str = "maml"
    shots: int = 10
    queries: int = 10
    meta_batch_size: int = 25
    train_steps: int = 70000
    steps_per_epoch: int = 1000
    inner_steps: int = 1
    inner_lr: float = 0.01
    meta_lr: float = 1e-3
    first_order: bool = False
    jit_compile: bool = True
    steps_per_execution: int = 100
    seed: int = 0
    eval_tasks: int = 1000
    eval_shots: tuple = (5, 10, 20)
    eval_steps: tuple = (1, 10)
    verbose: int = 1


def sinusoid_regressor(hidden=(40, 40)):
    """The MAML paper's 1-40-40-1 ReLU network."""
    layers = [keras.Input((1,))]
    layers += [keras.layers.Dense(h, activation="relu") for h in hidden]
    layers.append(keras.layers.Dense(1))
    return keras.Sequential(layers, name="sinusoid_regressor")


def build_maml(config, model):
    """Wraps `model` in the MAML variant that `config` names, compiled."""
    if config.variant not in VARIANTS:
        raise ValueError(
            f"--variant must be one of {VARIANTS}; got {config.variant!r}."
        )
    cls = {
        "maml": keras_meta.MAML,
        "meta_sgd": keras_meta.MetaSGD,
        "maml_plus_plus": keras_meta.MAMLPlusPlus,
        "anil": keras_meta.ANIL,
    }[config.variant]
    maml = cls(
        model,
        inner_learning_rate=config.inner_lr,
        inner_steps=config.inner_steps,
        first_order=config.first_order,
        eval_inner_steps=max(config.eval_steps),
    )
    maml.compile(
        optimizer=keras.optimizers.Adam(config.meta_lr),
        loss="mse",
        jit_compile=config.jit_compile,
        steps_per_execution=config.steps_per_execution,
    )
    return maml


def held_out_episodes(shots, seed, meta_batch_size=250, queries=100):
    """New tasks for evaluation, from a seed stream apart from training's."""
    return keras_meta.data.sinusoid(
        shots=shots, queries=queries, meta_batch_size=meta_batch_size,
        seed=10_000 + seed,
    )


def run(config):
    """Meta-trains, saves `model_dir/model.keras`, evaluates and reports.

    Returns:
        A dict with the evaluation table, timings and paths; also written
        to `model_dir/results.json`.
    """
    os.makedirs(config.model_dir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    maml = build_maml(config, sinusoid_regressor())
    train = keras_meta.data.sinusoid(
        shots=config.shots, queries=config.queries,
        meta_batch_size=config.meta_batch_size, seed=config.seed,
    )
    validation = keras_meta.data.sinusoid(
        shots=config.shots, queries=config.queries,
        meta_batch_size=config.meta_batch_size, seed=20_000 + config.seed,
    )
    epochs = max(1, -(-config.train_steps // config.steps_per_epoch))
    logs_dir = os.path.join(config.model_dir, "logs")
    callbacks = [
        keras.callbacks.BackupAndRestore(
            os.path.join(config.model_dir, "backup")
        ),
        keras.callbacks.TensorBoard(logs_dir),
        km_callbacks.InnerRateSummary(os.path.join(logs_dir, "inner_rates")),
    ]
    start = time.time()
    maml.fit(
        train,
        epochs=epochs,
        steps_per_epoch=config.steps_per_epoch,
        validation_data=validation,
        validation_steps=4,
        callbacks=callbacks,
        verbose=config.verbose,
    )
    train_seconds = time.time() - start
    model_path = os.path.join(config.model_dir, "model.keras")
    maml.save(model_path)

    start = time.time()
    table = evaluation.few_shot_table(
        maml,
        lambda k: held_out_episodes(k, config.seed),
        shots=config.eval_shots,
        steps=config.eval_steps,
        num_tasks=config.eval_tasks,
    )
    results = dict(
        config=dataclasses.asdict(config),
        table=table,
        train_seconds=train_seconds,
        eval_seconds=time.time() - start,
        meta_steps=epochs * config.steps_per_epoch,
        model_path=model_path,
    )
    with open(os.path.join(config.model_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results

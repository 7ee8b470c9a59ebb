"""The non-MAML learners of examples/train_maml.py (`--learner`).

`--learner=protonet|reptile|finetune` replaces the MAML variant by
`keras_meta.ProtoNet`, `keras_meta.Reptile` or `keras_meta.FineTune`
around the task's network, with the same episodes, run directory,
checkpoints, TensorBoard logs and held-out evaluation as MAML. Settings
left unset take the learner's defaults below.

Defaults, CPU budget (the default; meant for a few to 30 minutes on 2
cores with --max_train_minutes):
- protonet, Omniglot: conv4 with 64 filters and 2x2 max-pooling (Snell et
  al.'s network), 30-way training episodes (--train_ways) with 1 shot and
  5 queries per class, 1 episode per step, Adam 1e-3 halved every 2,000
  steps, each training image moved by up to 3 pixels per axis
  (--train_shift), mirror images as new classes (--train_flips), each
  prototype averaged over its support image moved by up to 3 pixels
  (--support_shift).
- reptile, Omniglot: conv4 (strided), 5 tasks per meta-step, 5 inner Adam
  steps (beta_1 = 0, rate 1e-3) on each task's support and query examples
  (1 + 4 per class), outer step size 1.0 with SGD, 20 inner steps in
  evaluation; sinusoid: 5 tasks, 5 inner SGD steps at 0.02, outer 0.1,
  10 evaluation steps.
- finetune, Omniglot: conv4 (strided) pretrained as a classifier of all
  training classes x 4 rotations (batches of 64, Adam 1e-3), then per
  episode a new linear head (zeros) trained 100 full-batch Adam steps at
  0.01 on the frozen, L2-normalized features of the support set;
  sinusoid: the network pretrained on all tasks' points (the MAML paper's
  "pretrained" baseline), then its last layer fine-tuned with SGD 0.01.

`--paper_settings`: the papers' settings instead (ProtoNet: 60-way
training episodes, no shift, mirror images or support views; Reptile: 10
inner steps on 10 examples per class (1 support + 9 query; full batch,
where the paper takes minibatches of 10), 50 evaluation steps, outer step
size annealed linearly to 0 over --train_steps), which need far more than
30 CPU-minutes.
"""

import keras
import numpy as np
import tensorflow as tf

import keras_meta

LEARNERS = ("maml", "protonet", "reptile", "finetune")
# The settings each learner fills in where a flag is left unset, per task.
_COMMON = dict(steps_per_epoch=100, steps_per_execution=1,
               jit_compile=False, checkpoint_every=1000)
DEFAULTS = {
    ("protonet", "omniglot"): dict(
        _COMMON, shots=1, queries=5, meta_batch_size=1, train_ways=30,
        train_steps=100000, inner_steps=1, eval_inner_steps=1,
        inner_lr=0.0, eval_queries=15, meta_lr=1e-3, train_shift=3,
        train_flips=True, support_shift=3),
    ("reptile", "omniglot"): dict(
        _COMMON, shots=1, queries=4, meta_batch_size=5, train_steps=100000,
        inner_steps=5, eval_inner_steps=20, inner_lr=1e-3, eval_queries=15,
        meta_lr=1.0),
    ("reptile", "sinusoid"): dict(
        _COMMON, shots=10, queries=10, meta_batch_size=5,
        train_steps=30000, inner_steps=5, eval_inner_steps=10,
        inner_lr=0.02, eval_queries=100, eval_shots=(5, 10, 20),
        eval_steps=(1, 10), meta_lr=0.1),
    ("finetune", "omniglot"): dict(
        _COMMON, shots=1, queries=1, meta_batch_size=64, train_steps=100000,
        inner_steps=100, eval_inner_steps=100, inner_lr=0.01,
        eval_queries=15, meta_lr=1e-3),
    ("finetune", "sinusoid"): dict(
        _COMMON, shots=10, queries=10, meta_batch_size=25,
        train_steps=10000, inner_steps=10, eval_inner_steps=10,
        inner_lr=0.01, eval_queries=100, eval_shots=(5, 10, 20),
        eval_steps=(1, 10), meta_lr=1e-3),
}
PAPER = {
    ("protonet", "omniglot"): dict(train_ways=60, queries=5, train_shift=0,
                                   train_flips=False, support_shift=0),
    ("reptile", "omniglot"): dict(shots=1, queries=9, inner_steps=10,
                                  eval_inner_steps=50),
}


def defaults(learner, task, paper_settings):
    """The defaults `--learner` brings for `task`.

    Raises:
        ValueError: the learner does not apply to the task (ProtoNet
            classifies: no sinusoid regression).
    """
    if (learner, task) not in DEFAULTS:
        raise ValueError(
            f"--learner={learner} does not apply to --task={task}: "
            "Prototypical Networks classify by distances to class means, "
            "so they need classification episodes (use --task=omniglot), "
            "not regression.")
    out = dict(DEFAULTS[(learner, task)])
    if paper_settings:
        out.update(PAPER.get((learner, task), {}))
    return out


def _omniglot_net(config, strided, outputs=None):
    if config.strided is not None:
        strided = config.strided
    return keras_meta.models.conv4_classifier(
        outputs or config.ways, filters=config.filters, strided=strided)


def _features(net):
    """The conv4 classifier without its logits layer."""
    name = "pool" if any(l.name == "pool" for l in net.layers) else "flatten"
    return keras.Model(net.inputs, net.get_layer(name).output,
                       name=f"{net.name}_features")


def _meta_optimizer(config):
    if config.learner == "reptile":
        rate = config.meta_lr
        if config.paper_settings:
            rate = keras.optimizers.schedules.PolynomialDecay(
                config.meta_lr, config.train_steps, 0.0)
        return keras.optimizers.SGD(rate)
    if config.learner == "protonet":
        return keras.optimizers.Adam(
            keras.optimizers.schedules.ExponentialDecay(
                config.meta_lr, 2000, 0.5, staircase=True))
    return keras.optimizers.Adam(config.meta_lr)


def build(config, task):
    """The compiled learner `config.learner` names around the task's net."""
    omniglot = config.task == "omniglot"
    if config.learner == "protonet":
        learner = keras_meta.ProtoNet(
            _features(_omniglot_net(config, strided=False)),
            distance=config.distance, support_shift=config.support_shift,
            transductive_steps=config.transductive_steps)
    elif config.learner == "reptile":
        inner = (keras.optimizers.Adam(config.inner_lr, beta_1=0.0)
                 if omniglot else keras.optimizers.SGD(config.inner_lr))
        learner = keras_meta.Reptile(
            _omniglot_net(config, True) if omniglot else task.model(),
            inner_optimizer=inner,
            inner_steps=config.inner_steps,
            eval_inner_steps=config.eval_inner_steps)
    else:
        if omniglot:
            classes = task.train.num_classes * 4
            net = _omniglot_net(config, True, outputs=classes)
            backbone, outputs = _features(net), classes
        else:
            net = task.model()
            backbone = keras.Model(net.inputs, net.layers[-2].output)
            outputs = 1
        learner = keras_meta.FineTune(
            backbone, outputs, head_steps=config.eval_inner_steps,
            head_learning_rate=config.inner_lr,
            head_optimizer="adam" if omniglot else "sgd",
            normalize_features=omniglot)
    learner.compile(optimizer=_meta_optimizer(config),
                    loss=None if omniglot else "mse",
                    metrics=list(task.metrics))
    return learner


def apply_evaluation_settings(config, learner):
    """Sets the evaluation settings of `config` on a built, restored or
    loaded learner (ProtoNet's support views and transductive steps,
    ProtoMAML's support views)."""
    if config.learner == "protonet":
        learner.support_shift = config.support_shift
        learner.transductive_steps = config.transductive_steps
    elif isinstance(learner, keras_meta.ProtoMAML):
        learner.support_shift = config.support_shift
    return learner


def train_episodes(config, task, skip_batches):
    """What `fit` trains on: episodes, or for `finetune` the pooled
    labelled examples of the training tasks."""
    if config.learner == "finetune":
        return pooled_examples(config, task, skip_batches)
    if config.learner == "protonet" and config.task == "omniglot":
        return keras_meta.data.episodes(
            task.train, ways=config.train_ways, shots=config.shots,
            queries=config.queries, meta_batch_size=config.meta_batch_size,
            seed=config.seed, rotations=True, skip_batches=skip_batches,
            shift=config.train_shift, distort=config.train_distort,
            flips=config.train_flips)
    return task.train_episodes(skip_batches=skip_batches)


def pooled_examples(config, task, skip_batches):
    """Batches of `(x, y)` for pretraining: Omniglot, every training image
    in its 4 rotations, each (class, rotation) a class; sinusoid, the
    support and query points of the training tasks."""
    if config.task == "sinusoid":
        def flat(episode):
            x = tf.concat([episode["support_x"], episode["query_x"]], 1)
            y = tf.concat([episode["support_y"], episode["query_y"]], 1)
            return tf.reshape(x, [-1, 1]), tf.reshape(y, [-1, 1])

        return task.train_episodes(skip_batches=skip_batches).map(flat)
    images, labels = task.train.images, task.train.labels
    rotated = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    x = np.concatenate(rotated)
    y = np.concatenate([labels * 4 + k for k in range(4)]).astype(np.int32)
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat()
    data = data.shuffle(len(x), seed=config.seed)
    batches = data.batch(config.meta_batch_size, drop_remainder=True)
    return batches.skip(skip_batches).prefetch(tf.data.AUTOTUNE)


def check(config):
    """Raises on settings a learner cannot use."""
    if config.learner != "maml" and config.variant != "maml":
        raise ValueError(
            f"--variant={config.variant} is a MAML variant; with "
            f"--learner={config.learner} leave --variant unset.")
    if config.learner != "maml" and config.zero_head:
        raise ValueError(
            f"--zero_head is a MAML option; --learner={config.learner} "
            "does not take it.")
    for flag in ("train_shift", "train_distort", "train_flips"):
        if config.learner == "finetune" and getattr(config, flag):
            raise ValueError(
                f"--{flag}={getattr(config, flag)} augments episodes; "
                "--learner=finetune pretrains on pooled images and does not "
                "take it.")
    if config.support_shift and config.learner != "protonet" and not (
            config.learner == "maml" and config.variant == "proto_maml"):
        raise ValueError(
            f"--support_shift={config.support_shift} is an option of "
            "--learner=protonet and --variant=proto_maml; "
            f"--learner={config.learner} --variant={config.variant} does "
            "not take it.")
    if config.learner != "protonet" and config.transductive_steps:
        raise ValueError(
            f"--transductive_steps={config.transductive_steps} is a "
            f"--learner=protonet option; --learner={config.learner} does "
            "not take it.")
    if config.learner == "protonet" and config.train_ways is not None and (
            config.train_ways < 2):
        raise ValueError(
            f"--train_ways must be >= 2; got {config.train_ways}.")


class FinalStepOnly:
    """A learner as `keras_meta.evaluation.adaptation_results` reads it,
    measuring the query set after the last step only (Omniglot's table
    reports accuracy after the last step; a query pass per step would
    cost Reptile several times its adaptation)."""

    def __init__(self, learner):
        self.learner = learner

    def task_results(self, episode, steps=None):
        return self.learner.task_results(episode, steps, record=False)


def for_table(config, learner):
    """What the task's evaluation table reads `learner` through."""
    if config.learner == "maml" or config.task != "omniglot":
        return learner
    return FinalStepOnly(learner)


def table_rows(config, rows):
    """ProtoNet takes no inner steps: its rows carry no step count."""
    if config.learner != "protonet":
        return rows
    return [{k: v for k, v in row.items() if k != "steps"} for row in rows]

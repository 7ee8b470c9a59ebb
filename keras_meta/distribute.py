"""Scale-out on `tf.distribute`: strategies, episode input, replica-safe steps.

keras_meta runs on TensorFlow's own distribution engine. Everything a
compiled step needs under a strategy is here:

  * `make_strategy(name, tpu=None)`: "default" (one device), "mirrored"
    (the local GPUs, or the logical CPU devices), "multi_worker"
    (`MultiWorkerMirroredStrategy`, the cluster from `TF_CONFIG`) or "tpu"
    (`TPUStrategy` on the TPU at `tpu`).
  * Episode input: `split_tasks` makes the task axis the batch axis that
    `strategy.experimental_distribute_dataset` splits (each replica gets a
    slice of every meta-batch, so the replicas together see exactly the
    single-device tasks); `episodes_from_function` gives every replica its
    own episode stream with its own seed through
    `strategy.distribute_datasets_from_function`.
  * `apply_if(ok, apply_fn, args, undo)`: a conditional optimizer step
    that works on one device and under a strategy, where Keras's
    `optimizer.apply` does a cross-replica `merge_call` that may not run in
    a `tf.cond` branch in replica context.
  * `assign_replicated(variable, value)` / `assign_replicated_many`:
    assign (mirrored) variables from replica context with values that
    every replica agrees on.
  * `is_chief(strategy)` and `write_dir(directory, strategy)`: with
    several workers only the chief writes to `directory`; the others write
    to a temporary directory, as the TensorFlow guide recommends.
"""

import tempfile

import numpy as np
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def make_strategy(name="default", tpu=None):
    """A `tf.distribute.Strategy` by name.

    Args:
        name: "default" (the current, single-device strategy), "mirrored"
            (`MirroredStrategy` over the local GPUs, or the CPU when there
            is none), "multi_worker" (`MultiWorkerMirroredStrategy`; every
            worker runs the same command with its own `TF_CONFIG`, see
            https://www.tensorflow.org/guide/distributed_training) or "tpu"
            (`TPUStrategy`).
        tpu: for "tpu": the TPU's name or `grpc://` address; "" or None on
            a TPU VM (the local TPU), or "local".

    Returns:
        The strategy. Create models, optimizers and `compile` inside
        `strategy.scope()`.
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"Unknown strategy {name!r}; expected one of {STRATEGIES}.")
    if tpu is not None and name != "tpu":
        raise ValueError(f"`tpu` is only used with strategy 'tpu'; got "
                         f"strategy {name!r} and tpu={tpu!r}.")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    # "local" on a TPU VM; a name or grpc:// address for a TPU node; ""
    # lets the resolver find it (TPU_NAME, Cloud metadata).
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=tpu or "")
    if tpu != "local":
        tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def check_created_in_scope(model):
    """Raises if a strategy is active but `model`'s variables were not
    created in its scope (the model was built outside `strategy.scope()`).

    Asked of the strategy itself (`variable_created_in_scope`), so a
    strategy whose variables are not distributed by design
    (`OneDeviceStrategy`; the default strategy) accepts a model built in
    its scope."""
    if not tf.distribute.has_strategy():
        return
    strategy = tf.distribute.get_strategy()
    variable = _target(model.trainable_variables[0])
    if not strategy.extended.variable_created_in_scope(variable):
        raise ValueError(
            f"`model` {model.name!r} was built outside the active "
            f"{type(strategy).__name__} scope, so the strategy does not "
            "manage its variables. Build the model inside "
            "`with strategy.scope():` too, then wrap it.")


# ----------------------------------------------------------------- workers


def _task(strategy):
    """`(task_type, task_id, cluster_spec)`; task_type None on one process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return None, 0, None
    return resolver.task_type, resolver.task_id, resolver.cluster_spec()


def is_chief(strategy=None):
    """True on the worker that writes checkpoints, logs and results.

    As in the TensorFlow guide: the "chief" task, or worker 0 of a cluster
    without a chief, or the only process when there is no cluster.
    """
    strategy = strategy or tf.distribute.get_strategy()
    task_type, task_id, cluster = _task(strategy)
    if task_type is None or task_type == "chief":
        return True
    has_chief = "chief" in cluster.as_dict()
    return task_type == "worker" and not has_chief and int(task_id or 0) == 0


def write_dir(directory, strategy=None):
    """`directory` on the chief; a fresh temporary directory elsewhere.

    Non-chief workers of a multi-worker job run the same code as the chief
    (saving is collective for some formats), but what they write is
    thrown away, so it goes to a temporary directory.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if is_chief(strategy):
        return directory
    task_type, task_id, _ = _task(strategy)
    return tempfile.mkdtemp(prefix=f"keras_meta_{task_type}{task_id}_")


# ------------------------------------------------------------------- input


def _static_tasks(element_spec, what):
    if not isinstance(element_spec, dict) or "support_x" not in element_spec:
        raise ValueError(f"{what}: expected a dataset of episode dicts; got "
                         f"element_spec {element_spec}.")
    tasks = element_spec["support_x"].shape[0]
    if tasks is None:
        raise ValueError(
            f"{what}: the number of tasks per episode batch must be static "
            "to split it across replicas (the keras_meta sources have it; "
            "batch your own with drop_remainder=True).")
    return tasks


def split_tasks(dataset, num_replicas=None):
    """The same episode stream, re-batched along the task axis.

    keras_meta sources make a whole meta-batch in one `map`, which
    `tf.distribute`'s automatic re-batching cannot see. This makes the task
    axis an explicit `batch` (static size, `drop_remainder=True`), so
    `strategy.experimental_distribute_dataset` (and Keras `fit` under a
    strategy) gives each replica `tasks / replicas` tasks of every
    meta-batch: the replicas together adapt exactly the tasks one device
    would.

    Args:
        dataset: a `tf.data.Dataset` of episode dicts with a static task
            axis.
        num_replicas: if given, the task count must be a multiple of it.
    """
    tasks = _static_tasks(dataset.element_spec, "split_tasks")
    if num_replicas and tasks % num_replicas:
        raise ValueError(
            f"A meta-batch of {tasks} tasks cannot be split evenly across "
            f"{num_replicas} replicas; use a meta-batch size that is a "
            "multiple of the number of replicas.")
    return dataset.unbatch().batch(tasks, drop_remainder=True)


def distribute_episodes(dataset, strategy=None):
    """`strategy.experimental_distribute_dataset` of an episode stream,
    each meta-batch's tasks split across the replicas (see `split_tasks`)."""
    strategy = strategy or tf.distribute.get_strategy()
    return strategy.experimental_distribute_dataset(
        split_tasks(dataset, strategy.num_replicas_in_sync))


def replica_seed(seed, replica_id):
    """A seed for replica `replica_id`'s episode stream (None stays None).

    Distinct replicas get unrelated streams (numpy `SeedSequence`).
    """
    if seed is None:
        return None
    state = np.random.SeedSequence([int(seed), int(replica_id)])
    return int(state.generate_state(1)[0] & 0x7FFFFFFF)


def episodes_from_function(make_dataset, meta_batch_size, seed=None,
                           strategy=None):
    """Per-replica episode streams, each with its own seed.

    Uses `strategy.distribute_datasets_from_function`: every input pipeline
    (one per worker) builds one stream per local replica with
    `make_dataset(per_replica_meta_batch_size, replica_seed(seed, id))`,
    `id` the replica's global index, and interleaves them in replica order,
    which is the order in which the worker's replicas take elements. So no
    two replicas see the same task, on one machine or many.

    Args:
        make_dataset: `fn(meta_batch_size, seed) -> tf.data.Dataset` of
            episodes, e.g. `lambda b, s: keras_meta.data.sinusoid(
            meta_batch_size=b, seed=s)`.
        meta_batch_size: the global number of tasks per meta-step, a
            multiple of `strategy.num_replicas_in_sync`.
        seed: base seed (None: unseeded streams).
        strategy: default: the current strategy.

    Returns:
        A `tf.distribute.DistributedDataset` for `fit`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if meta_batch_size % replicas:
        raise ValueError(
            f"meta_batch_size {meta_batch_size} is not a multiple of the "
            f"{replicas} replicas.")

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(meta_batch_size)
        local = context.num_replicas_in_sync // context.num_input_pipelines
        first = context.input_pipeline_id * local
        streams = [make_dataset(per_replica, replica_seed(seed, first + r))
                   for r in range(local)]
        if local == 1:
            return streams[0]
        order = tf.data.Dataset.range(local).repeat()
        return tf.data.Dataset.choose_from_datasets(streams, order)

    return strategy.distribute_datasets_from_function(dataset_fn)


# -------------------------------------------------------------- in a step


def _distributed():
    """The replica context if a strategy with cross-replica work is active."""
    if not tf.distribute.has_strategy():
        return None
    if tf.distribute.in_cross_replica_context():
        raise ValueError("Call this from replica context (inside "
                         "strategy.run or a Keras train_step).")
    return tf.distribute.get_replica_context()


def all_agree(ok):
    """True on every replica iff `ok` is true on every replica."""
    ctx = _distributed()
    if ctx is None:
        return ok
    # float32: an int32 all-reduce fails inside Keras's steps_per_execution
    # while_loop under MirroredStrategy (an unfed int32 placeholder).
    bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                         tf.cast(tf.logical_not(ok), tf.float32))
    return tf.equal(bad, 0)


def apply_if(ok, apply_fn, args=(), undo=()):
    """Runs `apply_fn(*args)` only if `ok` (on every replica).

    On one device: `tf.cond(ok, apply, nothing)`. Under a strategy a
    `tf.cond` cannot hold Keras's `optimizer.apply`, which does a
    cross-replica `merge_call` (not allowed in a branch in replica context;
    Keras's own `LossScaleOptimizer` moves the `cond` into cross-replica
    context, which fails inside the `while_loop` of `steps_per_execution >
    1`). So there the flag is all-reduced (all replicas decide alike),
    `apply_fn` always runs, and every variable in `undo` is then set back to
    its value from before unless `ok` (an elementwise select: a NaN in the
    discarded update does not leak). `undo` must list every variable that
    `apply_fn` changes (the optimizer's variables, including `iterations`,
    and the model's); a skipped step then leaves all of them bit for bit as
    they were, as on one device.
    """
    ctx = _distributed()
    if ctx is None:
        def run():
            apply_fn(*args)
            return tf.constant(True)

        tf.cond(ok, run, lambda: tf.constant(False))
        return
    ok = all_agree(ok)
    undo = list(undo)
    before = [tf.identity(_read(v)) for v in undo]
    with tf.control_dependencies(before):
        apply_fn(*args)
    after = [_read(v) for v in undo]
    assign_replicated_many(
        undo, [tf.where(ok, a, b) for a, b in zip(after, before)])


def _read(variable):
    return _target(variable).read_value()


def _target(variable):
    target = getattr(variable, "value", variable)
    return target if isinstance(target, tf.Variable) else variable


def assign_replicated_many(variables, values):
    """`assign_replicated` of several variables in one `merge_call`."""
    targets = [_target(v) for v in variables]
    ctx = _distributed()
    if ctx is None:
        for target, value in zip(targets, values):
            target.assign(tf.cast(value, target.dtype))
        return

    def update(distribution, values):
        for target, value in zip(targets, values):
            distribution.extended.update(
                target, lambda v, x: v.assign(tf.cast(x, v.dtype)),
                args=(value,), group=False)

    ctx.merge_call(update, args=(list(values),))


def assign_replicated(variable, value):
    """`variable.assign(value)` from replica context.

    On one device, the plain assignment. Under a strategy each replica's
    copy of the variable gets that replica's `value` through
    `extended.update` in a `merge_call`, which works whatever the
    variable's aggregation; all replicas must agree on `value` (e.g. it was
    all-reduced) or the copies drift apart.
    """
    assign_replicated_many([variable], [value])


def _multi_worker(strategy):
    extended = strategy.extended
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) \
        and extended._in_multi_worker_mode()  # noqa: SLF001


def keras_logs(logs):
    """A train/test step's logs in a form Keras can reduce over replicas.

    With several workers Keras reduces every log with
    `strategy.reduce("MEAN", value, axis=0)`, which fails on a scalar
    (keras/src/backend/tensorflow/trainer.py, `reduce_per_replica`): there
    each log gets a batch axis of one (and integers become floats, so the
    mean divides). The values are the same on every replica, so the mean
    is the value. Elsewhere the logs are returned as they are.
    """
    if not tf.distribute.has_strategy() or not _multi_worker(
            tf.distribute.get_strategy()):
        return logs
    return {key: tf.reshape(tf.cast(value, tf.float32), [1])
            for key, value in logs.items()}

"""Distributed checks, run in a subprocess by tests/test_distribute.py.

Logical devices must be configured before TensorFlow initializes its
devices, which the test process has long done, so each check runs here in a
fresh interpreter and prints one JSON line (`RESULT {...}`).

    python tests/distribute_helper.py mirrored     # MAML + LearnedOptimizer
    python tests/distribute_helper.py meta_trainer # MetaTrainer on 2 replicas
    python tests/distribute_helper.py worker OUT   # one MultiWorker worker
                                                   # (TF_CONFIG from the env)
"""

import contextlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def split_cpu(n=2):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def report(**values):
    print("RESULT " + json.dumps(values), flush=True)


def _net(keras, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((1,)),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(1),
    ])


def _maml(keras, keras_meta, weights=None, task_parallelism="auto"):
    net = _net(keras)
    if weights is not None:
        net.set_weights(weights)
    maml = keras_meta.MAML(net, inner_learning_rate=0.05, inner_steps=1,
                           max_consecutive_skips=None,
                           task_parallelism=task_parallelism)
    maml.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return maml


def _episodes(keras_meta, poison=False):
    data = keras_meta.data.sinusoid(shots=5, queries=5, meta_batch_size=4,
                                    seed=3)
    if poison:  # a NaN in the last task: only the second replica sees it
        def bad(e):
            y = e["query_y"]
            mask = tf.reshape(tf.range(4) == 3, [4, 1, 1])
            e = dict(e)
            e["query_y"] = tf.where(mask, np.nan, y)
            return e
        data = data.map(bad)
    return data


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(a, b))


def check_mirrored():
    split_cpu(2)
    import keras
    import keras_meta

    init = _net(keras).get_weights()
    results = {}
    # --- MAML: 3 meta-steps, then a poisoned (skipped) step.
    single = _maml(keras, keras_meta, init)
    single.fit(_episodes(keras_meta), steps_per_epoch=3, epochs=1, verbose=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = _maml(keras, keras_meta, init)
    mirrored.fit(_episodes(keras_meta), steps_per_epoch=3, epochs=1,
                 verbose=0)
    results["replicas"] = strategy.num_replicas_in_sync
    outside = _net(keras)  # built outside the scope: refused
    with strategy.scope():
        try:
            keras_meta.MAML(outside)
            results["outside_scope_error"] = ""
        except ValueError as e:
            results["outside_scope_error"] = str(e)
    # What fit does with the stream: each replica gets half of every
    # meta-batch, and together they hold the single-device batch.
    batch = next(iter(_episodes(keras_meta)))
    parts = strategy.experimental_local_results(next(iter(
        keras_meta.distribute.distribute_episodes(_episodes(keras_meta),
                                                  strategy)))["support_x"])
    results["tasks_per_replica"] = [int(p.shape[0]) for p in parts]
    results["split_diff"] = _max_diff([np.concatenate(parts)],
                                      [batch["support_x"]])

    # Per-replica streams: replica r's first batch is the stream of
    # replica_seed(5, r), and the two differ.
    def make(size, seed):
        return keras_meta.data.sinusoid(shots=5, queries=5,
                                        meta_batch_size=size, seed=seed)

    per = strategy.experimental_local_results(next(iter(
        keras_meta.distribute.episodes_from_function(
            make, 4, seed=5, strategy=strategy)))["support_x"])
    expected = [next(iter(make(2, keras_meta.distribute.replica_seed(5, r))))
                ["support_x"] for r in range(2)]
    results["per_replica_stream_diff"] = _max_diff(per, expected)
    results["per_replica_streams_differ"] = _max_diff([per[0]], [per[1]])
    results["maml_weight_diff"] = _max_diff(single.get_weights(),
                                            mirrored.get_weights())
    results["maml_moved"] = _max_diff(init, mirrored.model.get_weights())
    # The per-task path (each task differentiated inside the loop over
    # tasks, the default for convolutional models) on 2 replicas.
    with strategy.scope():
        per_task = _maml(keras, keras_meta, init, "sequential")
    per_task.fit(_episodes(keras_meta), steps_per_epoch=3, epochs=1,
                 verbose=0)
    results["per_task_weight_diff"] = _max_diff(single.get_weights(),
                                                per_task.get_weights())
    # Adam's moments also see the gradients' scale (its steps do not).
    results["per_task_optimizer_diff"] = _max_diff(
        [v.numpy() for v in single.optimizer.variables],
        [v.numpy() for v in per_task.optimizer.variables])
    results["maml_optimizer_diff"] = _max_diff(
        [v.numpy() for v in single.optimizer.variables],
        [v.numpy() for v in mirrored.optimizer.variables])
    before = [v.numpy() for v in mirrored.optimizer.variables]
    weights = mirrored.get_weights()
    history = mirrored.fit(_episodes(keras_meta, poison=True),
                           steps_per_epoch=1, epochs=1, verbose=0)
    counted = [i for i, v in enumerate(mirrored.weights)
               if "skipped_steps" in v.path]
    after = mirrored.get_weights()
    results["skip_weight_change"] = _max_diff(
        [w for i, w in enumerate(weights) if i not in counted],
        [w for i, w in enumerate(after) if i not in counted])
    results["skip_optimizer_change"] = _max_diff(
        before, [v.numpy() for v in mirrored.optimizer.variables])
    results["skipped_steps"] = int(history.history["skipped_steps"][-1])
    results["nonfinite_quantity"] = int(
        mirrored.nonfinite_quantity.numpy())
    # Both replicas' copies of every variable agree.
    spread = 0.0
    for v in mirrored.weights:
        parts = strategy.experimental_local_results(v.value)
        spread = max(spread, _max_diff([parts[0]], [parts[-1]]))
    results["replica_spread"] = spread

    # --- LearnedOptimizer in plain Keras fit.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True).astype("float32")

    def lo_model():
        keras.utils.set_random_seed(1)
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                              keras.layers.Dense(1)])
        # The LSTM's state slots (the default rule is below, steered).
        m.compile(optimizer=keras_meta.LearnedOptimizer(
            weights="per_tensor"), loss="mse")
        return m

    ref = lo_model()
    ref.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    with strategy.scope():
        dist = lo_model()
    dist.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    results["lopt_weight_diff"] = _max_diff(ref.get_weights(),
                                            dist.get_weights())
    results["lopt_state_diff"] = _max_diff(
        [v.numpy() for v in ref.optimizer.variables],
        [v.numpy() for v in dist.optimizer.variables])
    results["lopt_moved"] = _max_diff(
        ref.get_weights(), lo_model().get_weights())

    # --- ValidationControl steering it: validation targets it cannot
    # learn, so the control acts at every check.
    def controlled_fit(scope):
        with scope:
            keras.utils.set_random_seed(1)
            m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                                  keras.layers.Dense(1)])
            m.compile(optimizer=keras_meta.LearnedOptimizer(
                weights="normalized", use_ema=True), loss="mse")
        control = keras_meta.callbacks.ValidationControl(
            (x[:8], -3 * y[:8]), every=2, patience=1)
        m.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
              callbacks=[control])
        return m, control.history
    ref, ref_history = controlled_fit(contextlib.nullcontext())
    dist, dist_history = controlled_fit(strategy.scope())
    results["control_actions"] = [e["action"] for e in dist_history]
    results["control_same_actions"] = [e["action"] for e in ref_history] \
        == results["control_actions"]
    results["control_val_diff"] = _max_diff(
        [e["val_loss"] for e in ref_history],
        [e["val_loss"] for e in dist_history])
    results["control_weight_diff"] = _max_diff(ref.get_weights(),
                                               dist.get_weights())
    report(**results)


def check_meta_trainer():
    """A 2-replica meta-step equals the single-device step on the mean of
    the two replicas' truncations."""
    split_cpu(2)
    from keras_meta.meta import problems
    from keras_meta.meta import trainer as trainer_lib
    from keras_meta.rules import lstm as lstm_rule

    problem = problems.QuadraticProblem(batch_size=4, num_dims=3)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    kwargs = dict(unroll=3, horizon=6, seed=0, meta_lr=0.01)
    dist = trainer_lib.MetaTrainer([problem], strategy=strategy, **kwargs)
    ref = trainer_lib.MetaTrainer([problem], **kwargs)
    keys = sorted(ref.phi)
    phi0 = [ref.phi[k].value for k in keys]
    logs = dist.meta_step()
    seeds = dist._run["seeds"]
    fn = ref._truncation_fn(problem)
    outs = []
    for seed in seeds:
        inst = problem.sample(seed)
        params = list(inst.params)
        outs.append(fn(phi0, params,
                       [lstm_rule.init_state(p, ref.config) for p in params],
                       problem.task_tensors(inst),
                       problem.batches(inst, 4, seed + 7919)))
    grads = [tf.add_n(g) / len(outs)
             for g in zip(*[o["meta_grads"] for o in outs])]
    clipped, _ = tf.clip_by_global_norm(grads, ref.clip_norm)
    ref.meta_optimizer.apply(clipped, [ref.phi[k] for k in keys])
    objective = float(np.mean([float(o["objective"]) for o in outs]))
    phi_diff = _max_diff([ref.phi[k].numpy() for k in keys],
                         [dist.phi_numpy()[k] for k in keys])
    second = dist.meta_step()  # carries the per-replica runs
    report(
        seeds=seeds, phi_diff=phi_diff,
        objective_diff=abs(objective - logs["objective"]),
        applied=[logs["applied"], second["applied"]],
        run_step=second["run_step"])


def run_worker(out_dir):
    """One worker of a MultiWorkerMirroredStrategy job (TF_CONFIG set)."""
    import keras
    import keras_meta

    strategy = keras_meta.distribute.make_strategy("multi_worker")
    with strategy.scope():
        maml = _maml(keras, keras_meta, _net(keras).get_weights())
    maml.fit(_episodes(keras_meta), steps_per_epoch=3, epochs=1, verbose=0)
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    np.savez(os.path.join(out_dir, f"worker{index}.npz"),
             *maml.get_weights())
    report(worker=index, replicas=strategy.num_replicas_in_sync,
           chief=keras_meta.distribute.is_chief(strategy),
           steps=int(maml.optimizer.iterations.numpy()))


def main(argv):
    command = argv[1]
    if command == "mirrored":
        check_mirrored()
    elif command == "meta_trainer":
        check_meta_trainer()
    elif command == "worker":
        run_worker(argv[2])
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv)

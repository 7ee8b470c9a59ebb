"""keras_meta on tf.distribute (issue 6).

The checks that need several devices run in fresh interpreters
(tests/distribute_helper.py): the CPU is split into 2 logical devices,
which must happen before TensorFlow initializes its devices, and the
multi-worker job is two processes with TF_CONFIG on localhost ports.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras_meta
from keras_meta import distribute
from examples.maml import config as maml_training

HERE = os.path.dirname(os.path.abspath(__file__))
HELPER = os.path.join(HERE, "distribute_helper.py")
TIMEOUT = 240


def _env(**extra):
    env = dict(os.environ)
    root = os.path.dirname(HERE)
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + [p for p in [env.get("PYTHONPATH")] if p])
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _result(output):
    lines = [line for line in output.splitlines()
             if line.startswith("RESULT ")]
    assert lines, output[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def _helper(*args):
    proc = subprocess.run([sys.executable, HELPER, *args], env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return _result(proc.stdout)


@pytest.fixture(scope="module")
def mirrored():
    return _helper("mirrored")


def test_mirrored_maml_fit_equals_single_device(mirrored):
    assert mirrored["replicas"] == 2
    # fit splits every meta-batch along the task axis: 2 + 2 of 4 tasks.
    assert mirrored["tasks_per_replica"] == [2, 2]
    assert mirrored["split_diff"] == 0.0
    assert mirrored["maml_moved"] > 1e-2
    assert mirrored["maml_weight_diff"] < 1e-5
    assert mirrored["per_task_weight_diff"] < 1e-5
    assert mirrored["per_task_optimizer_diff"] < 1e-4
    assert mirrored["maml_optimizer_diff"] < 1e-4
    assert mirrored["replica_spread"] == 0.0
    assert "outside the active" in mirrored["outside_scope_error"]


def test_mirrored_nonfinite_step_is_skipped_on_every_replica(mirrored):
    # Only the second replica's tasks hold a NaN; both skip the step.
    assert mirrored["skipped_steps"] == 1
    assert mirrored["skip_weight_change"] == 0.0
    assert mirrored["skip_optimizer_change"] == 0.0
    assert mirrored["nonfinite_quantity"] == 1  # the pre-adaptation loss


def test_mirrored_learned_optimizer_fit_equals_single_device(mirrored):
    assert mirrored["lopt_moved"] > 1e-2
    assert mirrored["lopt_weight_diff"] < 1e-5
    assert mirrored["lopt_state_diff"] < 1e-4


def test_mirrored_validation_control_equals_single_device(mirrored):
    assert mirrored["control_same_actions"]
    assert "learning_rate+restore" in mirrored["control_actions"]
    assert mirrored["control_val_diff"] < 1e-5
    assert mirrored["control_weight_diff"] < 1e-5


def test_per_replica_episode_streams(mirrored):
    assert mirrored["per_replica_stream_diff"] == 0.0
    assert mirrored["per_replica_streams_differ"] > 0.1


def test_meta_trainer_splits_problems_across_replicas():
    result = _helper("meta_trainer")
    assert len(set(result["seeds"])) == 2
    assert result["phi_diff"] < 1e-6
    assert result["objective_diff"] < 1e-5
    assert result["applied"] == [True, True]
    assert result["run_step"] == 6


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_two_processes_end_with_same_weights(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for index in range(2):
        config = {"cluster": cluster,
                  "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(
            [sys.executable, HELPER, "worker", str(tmp_path)],
            env=_env(TF_CONFIG=json.dumps(config)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, out[-2000:] + err[-4000:]
    results = [_result(out) for out, _ in outputs]
    assert [r["replicas"] for r in results] == [2, 2]
    assert [r["chief"] for r in results] == [True, False]
    assert [r["steps"] for r in results] == [3, 3]
    weights = [np.load(tmp_path / f"worker{i}.npz") for i in range(2)]
    assert len(weights[0].files) == len(weights[1].files) > 0
    for name in weights[0].files:
        np.testing.assert_array_equal(weights[0][name], weights[1][name])


# ---------------------------------------------------- in-process, 1 device


def test_make_strategy():
    assert distribute.make_strategy("default") is tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="Unknown strategy"):
        distribute.make_strategy("horovod")
    with pytest.raises(ValueError, match="only used with strategy 'tpu'"):
        distribute.make_strategy("mirrored", tpu="local")
    assert distribute.is_chief()


def test_split_tasks():
    data = keras_meta.data.sinusoid(meta_batch_size=6, seed=0)
    split = distribute.split_tasks(data, num_replicas=3)
    a, b = next(iter(data)), next(iter(split))
    assert split.element_spec["support_x"].shape == (6, 10, 1)
    np.testing.assert_array_equal(a["query_y"], b["query_y"])
    with pytest.raises(ValueError, match="cannot be split evenly"):
        distribute.split_tasks(data, num_replicas=4)
    unknown = data.unbatch().batch(6)
    with pytest.raises(ValueError, match="must be static"):
        distribute.split_tasks(unknown)


def test_replica_seed():
    seeds = {distribute.replica_seed(0, r) for r in range(8)}
    assert len(seeds) == 8
    assert distribute.replica_seed(None, 3) is None
    assert distribute.replica_seed(7, 1) == distribute.replica_seed(7, 1)


def test_training_scripts_take_a_strategy():
    with pytest.raises(ValueError, match="--strategy must be one of"):
        maml_training.resolve(maml_training.Config(strategy="horovod"))
    config = maml_training.resolve(maml_training.Config(strategy="mirrored"))
    assert config.jit_compile is False  # XLA fails under MirroredStrategy
    assert config.steps_per_execution == 1  # Keras 3.15 fails with more
    assert maml_training.resolve(maml_training.Config()).jit_compile is True


def test_steps_are_tpu_compilable_shapes_static_and_xla():
    """What a TPU needs, checked on CPU: every per-replica input shape is
    static after the task split, and the whole MAML step (inner loop, meta-
    gradient, non-finite skip, batch-norm statistics) compiles with XLA."""
    images = tf.data.Dataset.range(40).map(lambda i: (
        tf.cast(tf.fill([28, 28, 1], i), tf.uint8), tf.cast(i // 8, tf.int32)))
    for data in (keras_meta.data.sinusoid(meta_batch_size=4, seed=0),
                 keras_meta.data.episodes(images, ways=5, shots=1, queries=2,
                                          meta_batch_size=4, seed=0)):
        spec = distribute.split_tasks(data, 2).element_spec
        assert all(s.shape.is_fully_defined() for s in spec.values()), spec
    import keras
    net = keras.Sequential([keras.Input((1,)), keras.layers.Dense(4),
                            keras.layers.BatchNormalization(),
                            keras.layers.Dense(1)])
    maml = keras_meta.MAML(net, task_parallelism="sequential")
    maml.compile(optimizer="adam", loss="mse", jit_compile=True)
    history = maml.fit(keras_meta.data.sinusoid(meta_batch_size=4, seed=0),
                       steps_per_epoch=2, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert int(maml.optimizer.iterations.numpy()) == 2

"""MAML meta-steps/s on 1 device vs MirroredStrategy over 2 logical CPUs.

    python -m benchmarks.distribute_scaling                # sinusoid + conv4
    python -m benchmarks.distribute_scaling --models=sinusoid --repeats=7

Each configuration runs in a fresh process (logical devices must be set
before TensorFlow initializes), builds the model, does one warm-up `fit`
call (trace + compile), then times `--repeats` calls of `fit` over
`--steps` meta-steps each and reports the median steps/s. Configurations:

  * `single`: no strategy (the default, what `fit` does on one device);
  * `mirrored1`: MirroredStrategy over one CPU device (the strategy's own
    overhead: merge_call, all-reduce of one);
  * `mirrored2`: MirroredStrategy over two logical CPU devices carved out
    of the same CPU (`tf.config.set_logical_device_configuration`), the
    meta-batch split 2 ways.

Logical devices share the same cores and thread pools, so this measures
the cost of the distributed step, not a speed-up: there is no second
processor. Results: printed and written to
benchmarks/results/distribute_scaling.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks import common

CONFIGS = ("single", "mirrored1", "mirrored2")


def _worker(model, config, steps, repeats, steps_per_execution):
    import tensorflow as tf

    if config == "mirrored2":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import keras_meta

    keras.utils.set_random_seed(0)
    if config == "single":
        strategy = tf.distribute.get_strategy()
    elif config == "mirrored1":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    else:
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        if model == "sinusoid":
            net = keras.Sequential([
                keras.Input((1,)),
                keras.layers.Dense(40, activation="relu"),
                keras.layers.Dense(40, activation="relu"),
                keras.layers.Dense(1)])
            maml = keras_meta.MAML(net, inner_learning_rate=0.01)
            maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse",
                         steps_per_execution=steps_per_execution)
            data = keras_meta.data.sinusoid(shots=10, queries=10,
                                            meta_batch_size=24, seed=0)
        else:
            net = keras_meta.models.conv4_classifier(ways=5, filters=32)
            maml = keras_meta.MAML(net, inner_learning_rate=0.4)
            maml.compile(
                optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True),
                steps_per_execution=steps_per_execution)
            images = tf.data.Dataset.range(50).map(lambda i: (
                tf.cast(tf.random.stateless_uniform(
                    [28, 28, 1], [i, 0], 0, 255, tf.int32), tf.uint8),
                tf.cast(i // 10, tf.int32)))
            data = keras_meta.data.episodes(images, ways=5, shots=1,
                                            queries=5, meta_batch_size=8,
                                            seed=0)
    start = time.perf_counter()
    maml.fit(data, steps_per_epoch=2, epochs=1, verbose=0)
    first = time.perf_counter() - start
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        maml.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
        rates.append(steps / (time.perf_counter() - start))
    print("RESULT " + json.dumps({
        "model": model, "config": config,
        "replicas": strategy.num_replicas_in_sync,
        "first_call_s": first, "steps_per_s": rates,
        "median_steps_per_s": statistics.median(rates)}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sinusoid,conv4")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sinusoid_steps", type=int, default=200)
    parser.add_argument("--conv4_steps", type=int, default=5)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # steps_per_execution > 1 fails under MirroredStrategy in Keras 3.15.
    spe = {"sinusoid": 1, "conv4": 1}
    steps = {"sinusoid": args.sinusoid_steps, "conv4": args.conv4_steps}
    if args.worker:
        model, config = args.worker
        _worker(model, config, steps[model], args.repeats, spe[model])
        return
    results = []
    for model in args.models.split(","):
        for config in CONFIGS:
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.distribute_scaling",
                 "--worker", model, config, "--repeats", str(args.repeats),
                 f"--sinusoid_steps={args.sinusoid_steps}",
                 f"--conv4_steps={args.conv4_steps}"],
                capture_output=True, text=True, env=env)
            lines = [l for l in proc.stdout.splitlines()
                     if l.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(proc.stderr[-3000:])
                raise SystemExit(f"{model}/{config} failed")
            results.append(json.loads(lines[-1][7:]))
            r = results[-1]
            print(f"{model:9s} {config:10s} {r['median_steps_per_s']:8.2f} "
                  f"steps/s (first call {r['first_call_s']:.1f} s)",
                  flush=True)
    rows = []
    for r in results:
        base = next(b for b in results if b["model"] == r["model"]
                    and b["config"] == "single")
        rows.append([r["model"], r["config"], r["replicas"],
                     f"{r['median_steps_per_s']:.2f}",
                     f"{r['median_steps_per_s'] / base['median_steps_per_s']:.2f}",
                     f"{r['first_call_s']:.1f}"])
    common.print_table(["model", "config", "replicas", "steps/s",
                        "vs single", "first call s"], rows)
    common.write_json("distribute_scaling.json", {
        "note": "shared 2-core CPU; logical devices share the cores",
        "repeats": args.repeats, "steps": steps, "results": results})


if __name__ == "__main__":
    main()

r"""MAML meta-steps: keras_meta against a PyTorch `torch.func` peer.

    python -m benchmarks.maml_peers                      # everything
    python -m benchmarks.maml_peers --benchmarks=sinusoid --reps=7

Runs every configuration in its own subprocess (a fresh framework, so the
first call measures the whole trace and compile, and the peak RSS is the
configuration's own), keras_meta and the peer back to back in one command:

* sinusoid: MLP 1-40-40-1, meta-batch 25, K=10 support and 10 query points,
  1 inner step, second order;
* conv4: the strided 64-filter Omniglot network on 28x28x1 images, 5-way
  1-shot with 15 queries per class, meta-batch 8 and 32, 1 and 5 inner
  steps, first and second order.

Both sides run the same meta-step: SGD inner loop on the support set, mean
query loss after adaptation, its gradient with respect to the
initialization, one Adam step. keras_meta runs its public `MAML` (through
the compiled `train_function` that `fit` uses, `--steps` meta-steps per
call); the peer runs `benchmarks/peers/torch_maml.py` in its `vmap` and
`loop` forms. Step time is the median of `--reps` timings of `--steps`
meta-steps after one warm-up call; the ratio is against the faster peer.

conv4 also gets its arithmetic rate: the FLOPs of the step counted
analytically (`conv4_step_flops`: forward = 2 x multiply-adds of the
convolutions and the head; a forward+backward = 3 forwards; the second-order
term through each inner step is counted as one more forward+backward on the
support set) divided by the step time, as a fraction of the machine's
matmul rate measured in the same command (a 2048x2048 float32 matmul, the
faster of TensorFlow and PyTorch).

`--memory_steps` runs conv4 (meta-batch 8) at several inner-step counts,
first and second order, and reports the peak RSS above the process's RSS
before the first step (`get_memory_info` peak on a GPU).

With no PyTorch installed (`pip install -e ".[bench]"`) the peer side is
skipped with a message. Results: a table on stdout and
`benchmarks/results/maml_peers.json`.
"""

import json
import math
import platform
import time

import numpy as np
from absl import app
from absl import flags

from benchmarks import common
from benchmarks.peers.workloads import QUERIES  # noqa: F401
from benchmarks.peers.workloads import SHOTS  # noqa: F401
from benchmarks.peers.workloads import WAYS  # noqa: F401
from benchmarks.peers.workloads import conv4_forward_flops  # noqa: F401
from benchmarks.peers.workloads import conv4_keras  # noqa: F401
from benchmarks.peers.workloads import conv4_step_flops  # noqa: F401
from benchmarks.peers.workloads import episode_arrays  # noqa: F401

flags.DEFINE_list("benchmarks", ["sinusoid", "conv4"], "Which benchmarks.")
flags.DEFINE_list("conv_meta_batch", ["8", "32"], "conv4 meta-batch sizes.")
flags.DEFINE_list("conv_inner_steps", ["1", "5"], "conv4 inner steps.")
flags.DEFINE_list("orders", ["second", "first"], "conv4 meta-gradient orders.")
flags.DEFINE_list("tf_modes", ["auto"],
                  "keras_meta `task_parallelism` values to time.")
flags.DEFINE_list("track_pre_adaptation", ["10", "false"],
                  "keras_meta `track_pre_adaptation` values: an int N (the "
                  "default is 10: one more query pass per task every N-th "
                  "meta-step for the pre_adapt_* logs; each timed call then "
                  "runs a multiple of N steps, so the pass's cost is "
                  "averaged in), true (every step) and false (the same "
                  "meta-step as the peer).")
flags.DEFINE_list("xla", ["auto", "on", "off"],
                  "keras_meta jit_compile settings: auto (the default "
                  "MAML picks), on, off.")
flags.DEFINE_bool("conv4_xla_all", False,
                  "Time XLA on every conv4 configuration (XLA conv steps are "
                  "slow on CPU); otherwise only on the first one.")
flags.DEFINE_list("peer_modes", ["vmap", "loop"], "PyTorch peer forms.")
flags.DEFINE_integer("reps", 5, "Timings per configuration.")
flags.DEFINE_integer("steps", 0,
                     "Meta-steps per timing (0: 200 for sinusoid, 2 for conv4).")
flags.DEFINE_list("memory_steps", ["1", "2", "5", "10"],
                  "Inner steps of the conv4 memory sweep (empty: skip).")
flags.DEFINE_integer("timeout", 600, "Seconds per configuration.")
flags.DEFINE_string("out", "maml_peers.json", "JSON file in results/.")
flags.DEFINE_string("_child", "", "Internal: one configuration as JSON.")
FLAGS = flags.FLAGS

MODULE = "benchmarks.maml_peers"
def _track_value(flag):
    """A `--track_pre_adaptation` entry as MAML's argument."""
    text = str(flag).lower()
    if text in ("true", "false"):
        return text == "true"
    return int(text)


def _track_label(flag):
    value = _track_value(flag)
    if value is True:
        return " pre every step"
    return " no-pre" if value is False else f" pre every {value}"


def keras_meta_child(cfg):
    import keras
    import tensorflow as tf

    import keras_meta
    from keras_meta.maml import task_parallel

    keras.utils.set_random_seed(0)
    if cfg["benchmark"] == "sinusoid":
        net = keras.Sequential([
            keras.Input((1,)), keras.layers.Dense(40, activation="relu"),
            keras.layers.Dense(40, activation="relu"), keras.layers.Dense(1)])
        loss, inner_lr = "mse", 0.01
    else:
        net = conv4_keras()
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        inner_lr = 0.4
    maml = keras_meta.MAML(
        net, inner_learning_rate=inner_lr, inner_steps=cfg["inner_steps"],
        first_order=cfg["order"] == "first",
        task_parallelism=cfg["mode"],
        track_pre_adaptation=_track_value(cfg.get("track_pre_adaptation",
                                                  "10")))
    jit = {"auto": "auto", "on": True, "off": False}[cfg["xla"]]
    maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss,
                 jit_compile=jit, steps_per_execution=cfg["steps"])
    arrays = episode_arrays(cfg["benchmark"], cfg["tasks"])
    data = tf.data.Dataset.from_tensors(
        {k: tf.constant(v) for k, v in arrays.items()}).repeat()
    rss_before = common.current_rss_mb()
    steps = cfg["steps"]
    result = common.fit_timings(maml, data, steps, cfg["reps"])
    result.update(
        jit_compile=bool(maml.jit_compile),
        task_parallelism=task_parallel.choose(maml),
        rss_before_mb=rss_before, peak_rss_mb=common.peak_rss_mb(),
        device=tf.config.list_logical_devices()[-1].device_type)
    if result["device"] == "GPU":
        result["gpu_peak_mb"] = tf.config.experimental.get_memory_info(
            "GPU:0")["peak"] / 2**20
    return result


def torch_child(cfg):
    import torch

    from benchmarks.peers import torch_maml

    torch.manual_seed(0)
    arrays = episode_arrays(cfg["benchmark"], cfg["tasks"])
    episode = {k: torch.from_numpy(v) for k, v in arrays.items()}
    if cfg["benchmark"] == "sinusoid":
        params, forward = torch_maml.mlp_params(), torch_maml.mlp_forward
        loss, inner_lr = "mse", 0.01
    else:
        params, forward = torch_maml.conv4_params(), torch_maml.conv4_forward
        loss, inner_lr = "cross_entropy", 0.4
        for key in ("support_x", "query_x"):  # NHWC -> NCHW
            episode[key] = episode[key].permute(0, 1, 4, 2, 3).contiguous()
        for key in ("support_y", "query_y"):
            episode[key] = episode[key].long()
    step = torch_maml.MamlStep(
        params, forward, loss, inner_lr, cfg["inner_steps"],
        cfg["order"] == "second", cfg["mode"])
    rss_before = common.current_rss_mb()

    def run_steps():
        for _ in range(cfg["steps"]):
            value = step(episode)
        float(value)

    result = common.timings(run_steps, cfg["steps"], cfg["reps"])
    result.update(rss_before_mb=rss_before, peak_rss_mb=common.peak_rss_mb(),
                  torch_threads=torch.get_num_threads())
    return result


def matmul_child(cfg):
    """GFLOP/s of a 2048x2048 float32 matmul, median of 10."""
    n, out = 2048, {}
    import tensorflow as tf

    a = tf.random.normal((n, n))
    matmul = tf.function(tf.matmul)
    times = []
    for i in range(11):
        start = time.perf_counter()
        matmul(a, a).numpy()
        if i:
            times.append(time.perf_counter() - start)
    out["tensorflow_gflops"] = 2 * n**3 / np.median(times) / 1e9
    try:
        import torch
    except ImportError:
        return out
    b = torch.randn(n, n)
    times = []
    for i in range(11):
        start = time.perf_counter()
        b @ b
        if i:
            times.append(time.perf_counter() - start)
    out["torch_gflops"] = 2 * n**3 / np.median(times) / 1e9
    return out


CHILDREN = {"keras_meta": keras_meta_child, "torch": torch_child,
            "matmul": matmul_child}


def configurations():
    """(benchmark, tasks, inner_steps, order) of every timed configuration."""
    configs = []
    if "sinusoid" in FLAGS.benchmarks:
        configs.append(("sinusoid", 25, 1, "second"))
    if "conv4" in FLAGS.benchmarks:
        for tasks in FLAGS.conv_meta_batch:
            for inner in FLAGS.conv_inner_steps:
                for order in FLAGS.orders:
                    configs.append(("conv4", int(tasks), int(inner), order))
    return configs


def _fmt(result, key, fmt):
    return fmt.format(result[key]) if key in result else result.get(
        "error", "-")[:40]


def main(argv):
    del argv
    if FLAGS._child:
        cfg = json.loads(FLAGS._child)
        print("RESULT " + json.dumps(CHILDREN[cfg["framework"]](cfg)))
        return
    have_torch = common.torch_available()
    peak = common.run_child(MODULE, dict(framework="matmul"), FLAGS.timeout)
    peak_gflops = max(v for k, v in peak.items() if k.endswith("gflops"))
    print(f"matmul 2048^2: {peak} -> machine peak {peak_gflops:.0f} GFLOP/s")
    rows, table = [], []
    configs = configurations()
    for bench, tasks, inner, order in configs:
        first_conv4 = (bench, tasks, inner, order) == next(
            (c for c in configs if c[0] == "conv4"), None)
        steps = FLAGS.steps or (200 if bench == "sinusoid" else 2)
        base = dict(benchmark=bench, tasks=tasks, inner_steps=inner,
                    order=order, reps=FLAGS.reps, steps=steps)
        runs = []
        for mode in FLAGS.tf_modes:
            for xla in FLAGS.xla:
                for track in FLAGS.track_pre_adaptation:
                    if bench == "conv4" and xla == "on" and (
                            track != FLAGS.track_pre_adaptation[0]
                            or (not first_conv4 and not FLAGS.conv4_xla_all)):
                        continue
                    cfg = dict(base, framework="keras_meta", mode=mode,
                               xla=xla, track_pre_adaptation=track)
                    every = _track_value(track)
                    if every is not True and every:  # whole periods
                        cfg["steps"] = steps * every // math.gcd(steps, every)
                    if xla == "on" and bench == "conv4":
                        cfg.update(steps=1, reps=min(FLAGS.reps, 2))
                    runs.append(cfg)
        if have_torch:
            runs += [dict(base, framework="torch", mode=m, xla="-")
                     for m in FLAGS.peer_modes]
        results = []
        for cfg in runs:
            result = dict(cfg, **common.run_child(MODULE, cfg,
                                                  FLAGS.timeout))
            results.append(result)
            print(json.dumps({k: v for k, v in result.items()
                              if k != "step_ms_all"}), flush=True)
        peers = [r for r in results if r["framework"] == "torch"
                 and "step_ms" in r]
        best_peer = min(peers, key=lambda r: r["step_ms"]) if peers else None
        flops = (conv4_step_flops(tasks, inner, order == "second")
                 if bench == "conv4" else None)
        for r in results:
            if "step_ms" in r:
                if best_peer:
                    r["speedup_vs_best_peer"] = (best_peer["step_ms"]
                                                 / r["step_ms"])
                if flops:
                    r["gflops"] = flops / (r["step_ms"] / 1000) / 1e9
                    r["fraction_of_matmul_peak"] = r["gflops"] / peak_gflops
            name = r["framework"] + (
                f" {r['mode']} xla={r['xla']}"
                + _track_label(r["track_pre_adaptation"])
                if r["framework"] == "keras_meta" else f" {r['mode']}")
            table.append([
                f"{bench} mb{tasks} s{inner} {order}", name,
                _fmt(r, "step_ms", "{:.2f}"), _fmt(r, "compile_s", "{:.1f}"),
                _fmt(r, "speedup_vs_best_peer", "{:.2f}x"),
                _fmt(r, "fraction_of_matmul_peak", "{:.1%}"),
                _fmt(r, "peak_rss_mb", "{:.0f}")])
        rows.extend(results)
    memory = []
    if "conv4" in FLAGS.benchmarks and FLAGS.memory_steps:
        for order in ("second", "first"):
            for inner in FLAGS.memory_steps:
                cfg = dict(framework="keras_meta", benchmark="conv4", tasks=8,
                           inner_steps=int(inner), order=order, reps=1,
                           steps=1, mode=FLAGS.tf_modes[0], xla="auto",
                           track_pre_adaptation="false")
                result = dict(cfg, **common.run_child(MODULE, cfg,
                                                  FLAGS.timeout))
                if "peak_rss_mb" in result:
                    result["step_memory_mb"] = (result["peak_rss_mb"]
                                                - result["rss_before_mb"])
                memory.append(result)
                print(f"memory conv4 mb8 {order} order, {inner} inner steps: "
                      f"{_fmt(result, 'step_memory_mb', '{:.0f}')} MB above "
                      f"the pre-step RSS", flush=True)
    common.print_table(["configuration", "implementation", "ms/step",
                        "compile s", "vs best peer", "of matmul peak",
                        "peak RSS MB"], table)
    common.write_json(FLAGS.out, dict(
        benchmark="maml_peers", matmul=peak, peak_gflops=peak_gflops,
        python=platform.python_version(), rows=rows, memory=memory))


if __name__ == "__main__":
    app.run(main)

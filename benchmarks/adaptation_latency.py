r"""Few-shot adaptation at serving time: per-task latency and throughput.

    python -m benchmarks.adaptation_latency
    python -m benchmarks.adaptation_latency --benchmarks=sinusoid --reps=7

Each benchmark runs in its own subprocess per framework (keras_meta, then
the PyTorch peer, back to back in one command), with the meta-model at its
initialization (adaptation costs the same whatever the weights):

* sinusoid: MLP 1-40-40-1, 10 inner SGD steps on 5 support points, 10
  query points (MAML's default regression setting);
* conv4: the strided 64-filter Omniglot network on 28x28x1 images, 5-way
  1-shot, 15 queries per class, 3 inner steps (the evaluation setting of
  `examples/train_maml.py`).

keras_meta paths, each timed per task after its first call (which traces
and compiles; reported apart as `first_s`):

* `adapt+predict`: `maml.adapt()` (a Keras clone holding the fast weights)
  then the clone's `predict`, which shares one predict function across
  clones;
* `adapt+predict (own trace)`: the same with the clone's own predict
  function, which Keras traces for every new model (the cost before the
  shared function);
* `adapt+call`: `adapt()` then calling the clone eagerly;
* `adapt_and_predict`: the compiled path with its input checks, and
  `(no checks)`, its cached `tf.function` alone;
* `saved_model`: the `adapt_and_predict` signature of `maml.export()`,
  loaded with `tf.saved_model.load`;
* `batch`: `adapt_and_predict_batch` on `--batch_tasks` tasks of mixed
  support sizes (padded and masked; conv4: 1-shot, all the same size),
  reported per task and in tasks/s.

The peer adapts one task with `benchmarks/peers/torch_maml.py`'s inner
loop (`MamlStep._adapt_functional`, first order) and predicts the query
set, once per `--torch_threads` value. Per-task time is the median over
`--reps` rounds of the mean of `--calls` calls, the paths of a process
interleaved round by round so that a shared machine's load falls on all
alike; ratios are within one command. The sinusoid run also calls `adapt_and_predict`
`--retrace_calls` times on tasks of one shape and reports the traces and
TensorFlow retracing warnings seen (expected: 1 trace, 0 warnings).
Results: a table on stdout and `benchmarks/results/adaptation_latency.json`.
"""

import json
import logging
import os
import tempfile
import time

import numpy as np
from absl import app
from absl import flags

from benchmarks import common

flags.DEFINE_list("benchmarks", ["sinusoid", "conv4"], "Which benchmarks.")
flags.DEFINE_integer("reps", 7, "Repetitions per path (median).")
flags.DEFINE_integer("calls", 20, "Tasks per repetition.")
flags.DEFINE_integer("slow_calls", 3,
                     "Tasks per repetition of the slow paths (a new trace "
                     "per call).")
flags.DEFINE_integer("batch_tasks", 100,
                     "Tasks per adapt_and_predict_batch call (sinusoid; "
                     "conv4 uses a quarter).")
flags.DEFINE_integer("retrace_calls", 1000,
                     "adapt_and_predict calls of one shape in the retrace "
                     "check (0: skip).")
flags.DEFINE_list("torch_threads", ["1", "2"],
                  "torch.set_num_threads values of the peer (one child "
                  "each): on a loaded machine 2 threads can run far slower "
                  "than 1).")
flags.DEFINE_integer("timeout", 900, "Seconds per child process.")
flags.DEFINE_string("out", "adaptation_latency.json", "JSON file in results/.")
flags.DEFINE_string("_child", "", "Internal: one configuration as JSON.")
FLAGS = flags.FLAGS

MODULE = "benchmarks.adaptation_latency"
WAYS = 5
SETTINGS = {
    "sinusoid": dict(shots=5, queries=10, steps=10, inner_lr=0.01,
                     batch_shots=(3, 4, 5)),
    "conv4": dict(shots=1, queries=15, steps=3, inner_lr=0.4,
                  batch_shots=None),
}


def make_tasks(name, count, shots, seed=0):
    """`count` tasks `(support_x, support_y, query_x)` as numpy arrays:
    sine waves of random amplitude and phase on [-5, 5], or 5-way tasks
    of random 28x28 uint8 images (the input of `conv4_classifier`)."""
    rng = np.random.default_rng(seed)
    queries = SETTINGS[name]["queries"]
    tasks = []
    for _ in range(count):
        if name == "sinusoid":
            amp, phase = rng.uniform(0.1, 5.0), rng.uniform(0, np.pi)
            x = rng.uniform(-5, 5, (shots + queries, 1)).astype("float32")
            y = (amp * np.sin(x - phase)).astype("float32")
            tasks.append((x[:shots], y[:shots], x[shots:]))
            continue
        labels = np.repeat(np.arange(WAYS, dtype="int32"), shots)
        images = rng.integers(0, 256, (WAYS * (shots + queries), 28, 28, 1),
                              dtype="uint8")
        tasks.append((images[:len(labels)], labels, images[len(labels):]))
    return tasks


def time_paths(paths, tasks, reps):
    """Times each path `name: (fn, calls, per_call_tasks)`: its first call
    (seconds), then `reps` rounds that each run every path's `calls` calls
    of `fn(task)` in turn (interleaved, so that the load of a shared
    machine falls on all paths alike). Per-task time: the median over
    rounds of the mean per call, divided by `per_call_tasks` (ms). A path
    with fewer `calls` than the others (the slow ones) runs in two rounds
    only."""
    most = max(calls for _, calls, _ in paths.values())
    results = {}
    for name, (fn, _, _) in paths.items():
        start = time.perf_counter()
        fn(tasks[0])
        results[name] = dict(first_s=time.perf_counter() - start,
                             task_ms_all=[])
    for rep in range(reps):
        for name, (fn, calls, per_call) in paths.items():
            if calls < most and rep >= 2:
                continue
            start = time.perf_counter()
            for i in range(calls):
                fn(tasks[(rep * calls + i) % len(tasks)])
            results[name]["task_ms_all"].append(
                1000 * (time.perf_counter() - start) / calls / per_call)
    for result in results.values():
        result["task_ms"] = float(np.median(result["task_ms_all"]))
    return results


def build_maml(name):
    import keras

    import keras_meta

    keras.utils.set_random_seed(0)
    if name == "sinusoid":
        net = keras.Sequential([
            keras.Input((1,)), keras.layers.Dense(40, activation="relu"),
            keras.layers.Dense(40, activation="relu"), keras.layers.Dense(1)])
        loss = "mse"
    else:
        net = keras_meta.models.conv4_classifier(ways=WAYS)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    cfg = SETTINGS[name]
    maml = keras_meta.MAML(net, inner_learning_rate=cfg["inner_lr"],
                           eval_inner_steps=cfg["steps"])
    maml.compile(optimizer="adam", loss=loss)
    return maml


def retrace_check(maml, tasks, calls):
    """Calls `adapt_and_predict` `calls` times on tasks of one shape:
    the traces of its function and the retracing warnings logged."""
    import tensorflow as tf

    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    tf.get_logger().addHandler(handler)
    fn = maml.adapt_and_predict_function()
    for i in range(calls):
        maml.adapt_and_predict(*tasks[i % len(tasks)])
    tf.get_logger().removeHandler(handler)
    return dict(calls=calls, traces=fn.experimental_get_tracing_count(),
                retracing_warnings=sum("retracing" in w for w in warnings))


def batch_columns(maml, name, cfg):
    """`adapt_and_predict_batch`'s per-task lists: sinusoid tasks of mixed
    support sizes, or conv4 tasks."""
    count = cfg["batch_tasks"] if name == "sinusoid" else max(
        cfg["batch_tasks"] // 4, 1)
    shots = SETTINGS[name]["batch_shots"]
    tasks = make_tasks(name, count, SETTINGS[name]["shots"], seed=1)
    if shots:  # mixed support sizes, cycling through `shots`
        tasks = [(sx[:shots[i % len(shots)]], sy[:shots[i % len(shots)]],
                  qx) for i, (sx, sy, qx) in enumerate(tasks)]
    return [list(part) for part in zip(*tasks)]


def keras_meta_paths(maml, name, tasks, cfg, export_dir):
    """The timed keras_meta paths (see the module docstring)."""
    import tensorflow as tf

    calls = cfg["calls"]

    def own_trace(task):
        adapted = maml.adapt(task[0], task[1])
        adapted.predict_function = None  # Keras makes and traces its own
        return adapted.predict(task[2], verbose=0)

    fast = maml.adapt_and_predict_function()
    start = time.perf_counter()
    maml.export(export_dir, verbose=False)
    export_s = time.perf_counter() - start
    sig = tf.saved_model.load(export_dir).signatures["adapt_and_predict"]
    columns = batch_columns(maml, name, cfg)
    paths = {
        "adapt+predict": (lambda t: maml.adapt(t[0], t[1]).predict(
            t[2], verbose=0), calls, 1),
        "adapt+predict (own trace)": (own_trace, cfg["slow_calls"], 1),
        "adapt+call": (lambda t: maml.adapt(t[0], t[1])(t[2]).numpy(),
                       calls, 1),
        "adapt_and_predict": (lambda t: maml.adapt_and_predict(*t).numpy(),
                              calls, 1),
        "adapt_and_predict (no checks)": (lambda t: fast(*t).numpy(), calls,
                                          1),
        "saved_model": (lambda t: sig(
            support_x=t[0], support_y=t[1],
            query_x=t[2])["output_0"].numpy(), calls, 1),
        "batch": (lambda _: maml.adapt_and_predict_batch(*columns), 1,
                  len(columns[0])),
    }
    results = time_paths(paths, tasks, cfg["reps"])
    results["saved_model"]["export_s"] = export_s
    results["batch"].update(tasks=len(columns[0]),
                            support_sizes=SETTINGS[name]["batch_shots"],
                            tasks_per_s=1000 / results["batch"]["task_ms"])
    return results


def keras_meta_child(cfg):
    import tensorflow as tf

    from keras_meta.maml import task_parallel

    name = cfg["benchmark"]
    maml = build_maml(name)
    tasks = make_tasks(name, 50, SETTINGS[name]["shots"])
    with tempfile.TemporaryDirectory() as export_dir:
        results = keras_meta_paths(maml, name, tasks, cfg, export_dir)
    out = dict(paths=results, jit_compile=bool(maml.jit_compile),
               task_parallelism=task_parallel.choose(maml),
               intra_op_threads=tf.config.threading
               .get_intra_op_parallelism_threads())
    if name == "sinusoid" and cfg["retrace_calls"]:
        out["retrace_check"] = retrace_check(maml, tasks,
                                             cfg["retrace_calls"])
    return out


def torch_child(cfg):
    import torch

    from benchmarks.peers import torch_maml

    torch.manual_seed(0)
    torch.set_num_threads(cfg["threads"])
    name, settings = cfg["benchmark"], SETTINGS[cfg["benchmark"]]
    tasks = make_tasks(name, 50, settings["shots"])
    if name == "sinusoid":
        params, forward, loss = (torch_maml.mlp_params(),
                                 torch_maml.mlp_forward, "mse")
        convert = torch.from_numpy
    else:
        params, forward, loss = (torch_maml.conv4_params(),
                                 torch_maml.conv4_forward, "cross_entropy")

        def convert(a):  # uint8 NHWC -> inverted [0, 1] NCHW; labels: long
            t = torch.from_numpy(a)
            if t.ndim < 4:
                return t.long()
            return 1 - t.permute(0, 3, 1, 2).float().contiguous() / 255
    tasks = [tuple(convert(a) for a in task) for task in tasks]
    step = torch_maml.MamlStep(params, forward, loss, settings["inner_lr"],
                               settings["steps"], second_order=False,
                               mode="loop")

    def adapt_and_predict(task):
        fast = step._adapt_functional(step.params, task[0], task[1])
        with torch.no_grad():
            return forward(fast, task[2]).numpy()

    path = f"torch adapt+predict ({cfg['threads']} thr)"
    return dict(paths=time_paths({path: (adapt_and_predict, cfg["calls"],
                                         1)}, tasks, cfg["reps"]))


CHILDREN = {"keras_meta": keras_meta_child, "torch": torch_child}


def _rows(name, results):
    """Table rows of one benchmark, with ratios to `adapt_and_predict`."""
    paths = {}
    for result in results:
        paths.update(result.get("paths", {}))
    base = paths.get("adapt_and_predict", {}).get("task_ms")
    rows = []
    for path, r in paths.items():
        if base:
            r["vs_adapt_and_predict"] = r["task_ms"] / base
        rows.append([name, path, f"{r['task_ms']:.2f}",
                     f"{r['first_s']:.2f}",
                     f"{r['vs_adapt_and_predict']:.2f}x" if base else "-",
                     f"{r['tasks_per_s']:.0f}" if "tasks_per_s" in r
                     else "-"])
    return rows


def main(argv):
    del argv
    if FLAGS._child:
        cfg = json.loads(FLAGS._child)
        print("RESULT " + json.dumps(CHILDREN[cfg["framework"]](cfg)))
        return
    children = [("keras_meta", None)] + (
        [("torch", int(n)) for n in FLAGS.torch_threads]
        if common.torch_available() else [])
    table, runs = [], []
    for name in FLAGS.benchmarks:
        results = []
        for framework, threads in children:
            cfg = dict(framework=framework, benchmark=name, reps=FLAGS.reps,
                       calls=FLAGS.calls, slow_calls=FLAGS.slow_calls,
                       batch_tasks=FLAGS.batch_tasks, threads=threads,
                       retrace_calls=FLAGS.retrace_calls)
            result = dict(cfg, **common.run_child(MODULE, cfg,
                                                  FLAGS.timeout))
            if "error" in result:
                print(f"{name} {framework}: {result['error']}", flush=True)
            results.append(result)
        table += _rows(name, results)
        for result in results:
            if "retrace_check" in result:
                print(f"{name} retrace check: {result['retrace_check']}")
        runs.append(dict(benchmark=name, settings=SETTINGS[name],
                         results=results))
    common.print_table(["benchmark", "path", "ms/task", "first call s",
                        "vs adapt_and_predict", "tasks/s"], table)
    common.write_json(FLAGS.out, dict(
        benchmark="adaptation_latency", load_average=os.getloadavg(),
        runs=runs))


if __name__ == "__main__":
    app.run(main)

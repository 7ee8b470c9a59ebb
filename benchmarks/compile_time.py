"""First-call (trace + compile) time of `fit`'s train step for the default
configurations of `examples/train_maml.py`.

Each configuration runs in a fresh process: the MAML variant that
`examples/maml/train.build_maml` builds from the script's defaults (sinusoid;
Omniglot 5-way and 20-way, on random images of the same shapes so no data
is needed), one `fit` call, then `--reps` timed calls of the compiled train
function. The compile time is the first call minus the steps it ran.

Usage:
    python -m benchmarks.compile_time
    python -m benchmarks.compile_time --tasks=omniglot20 --xla=auto,off --processes=1
"""

import dataclasses
import json

from absl import app
from absl import flags

from benchmarks import common

flags.DEFINE_list("tasks", ["sinusoid", "omniglot5", "omniglot20"],
                  "Default configurations: sinusoid, omniglot5, omniglot20.")
flags.DEFINE_list("variants", ["maml", "meta_sgd", "maml_plus_plus", "anil"],
                  "MAML variants (`--variant` of train_maml.py).")
flags.DEFINE_list("xla", ["auto"], "jit_compile: auto (the default), on, "
                  "off.")
flags.DEFINE_bool("first_order", False, "Also time --first_order.")
flags.DEFINE_integer("reps", 3, "Timed calls after the first.")
flags.DEFINE_integer("processes", 3, "Fresh processes per configuration: "
                     "the first call's time varies between processes (a "
                     "few seconds, now and then), so the table gives the "
                     "median and the largest.")
flags.DEFINE_integer("timeout", 600, "Seconds per configuration.")
flags.DEFINE_string("out", "compile_time.json", "JSON file in results/.")
flags.DEFINE_string("_child", "", "Internal: one configuration as JSON.")
FLAGS = flags.FLAGS

MODULE = "benchmarks.compile_time"
TASKS = {"sinusoid": dict(task="sinusoid"),
         "omniglot5": dict(task="omniglot", ways=5),
         "omniglot20": dict(task="omniglot", ways=20)}


class _RandomOmniglot:
    """The Omniglot task's network, loss and rate, without its data."""

    def __init__(self, config):
        import keras

        import keras_meta
        self.config = config
        self.loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True)
        self.metrics = ("accuracy",)
        self._model = keras_meta.models.conv4_classifier(
            config.ways, filters=config.filters)

    def model(self):
        return self._model

    def inner_learning_rate(self):
        return self.config.inner_lr * self.config.ways

    def train_episodes(self):
        import numpy as np
        import tensorflow as tf
        c, rng = self.config, np.random.default_rng(0)
        labels = np.arange(c.ways, dtype="int32")

        def images(per_class):
            return rng.uniform(0, 1, (c.meta_batch_size, c.ways * per_class,
                                      28, 28, 1)).astype("float32")

        episode = dict(
            support_x=images(c.shots),
            support_y=np.tile(np.repeat(labels, c.shots),
                              (c.meta_batch_size, 1)),
            query_x=images(c.queries),
            query_y=np.tile(np.repeat(labels, c.queries),
                            (c.meta_batch_size, 1)))
        return tf.data.Dataset.from_tensors(episode).repeat()


def child(cfg):
    import keras
    import tensorflow as tf

    from examples.maml import config as maml_config
    from examples.maml import tasks as maml_tasks
    from examples.maml import train as maml_train
    from keras_meta.maml import task_parallel

    keras.utils.set_random_seed(0)
    jit = {"auto": None, "on": True, "off": False}[cfg["xla"]]
    config = maml_config.resolve(maml_config.Config(
        **TASKS[cfg["task"]], variant=cfg["variant"], jit_compile=jit,
        first_order=cfg["first_order"]))
    task = (maml_tasks.SinusoidTask(config) if config.task == "sinusoid"
            else _RandomOmniglot(config))
    maml = maml_train.build_maml(config, task)
    data = task.train_episodes().repeat()
    steps = config.steps_per_execution
    result = common.fit_timings(maml, data, steps, cfg["reps"])
    result.update(
        config={k: v for k, v in dataclasses.asdict(config).items()
                if k in ("ways", "meta_batch_size", "inner_steps", "shots",
                         "queries", "steps_per_execution")},
        jit_compile=bool(maml.jit_compile),
        task_parallelism=task_parallel.choose(maml),
        device=tf.config.list_logical_devices()[-1].device_type)
    return result


def _jit_label(xla, runs):
    done = [r for r in runs if "jit_compile" in r]
    if not done:
        return xla
    return f"{xla} ({'XLA' if done[0]['jit_compile'] else 'graph'})"


def _summary(runs):
    """Median and largest compile time, median step time, over processes."""
    import numpy as np
    done = [r for r in runs if "compile_s" in r]
    if not done:
        return [runs[0].get("error", "-")[:40], "-", "-"]
    compile_s = [r["compile_s"] for r in done]
    return [f"{np.median(compile_s):.1f}", f"{max(compile_s):.1f}",
            f"{np.median([r['step_ms'] for r in done]):.1f}"]


def main(argv):
    del argv
    if FLAGS._child:
        cfg = json.loads(FLAGS._child)
        print("RESULT " + json.dumps(child(cfg)))
        return
    rows, table = [], []
    orders = [False, True] if FLAGS.first_order else [False]
    for task in FLAGS.tasks:
        if task not in TASKS:
            raise app.UsageError(f"--tasks: unknown {task!r}; expected some "
                                 f"of {sorted(TASKS)}.")
        for variant in FLAGS.variants:
            for first_order in orders:
                for xla in FLAGS.xla:
                    cfg = dict(task=task, variant=variant, xla=xla,
                               first_order=first_order, reps=FLAGS.reps)
                    runs = []
                    for _ in range(FLAGS.processes):
                        result = dict(cfg, **common.run_child(
                            MODULE, cfg, FLAGS.timeout))
                        runs.append(result)
                        print(json.dumps({k: v for k, v in result.items()
                                          if k != "step_ms_all"}),
                              flush=True)
                    rows.extend(runs)
                    table.append([task, variant + (
                        " first-order" if first_order else ""),
                        _jit_label(xla, runs), *_summary(runs)])
    common.print_table(["configuration", "variant", "jit_compile",
                        "compile s (median)", "compile s (max)",
                        "ms/step (median)"], table)
    path = common.write_json(FLAGS.out, dict(rows=rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)

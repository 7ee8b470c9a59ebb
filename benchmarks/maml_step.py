r"""Compile time and step time of MAML's train step, per task formulation.

    python benchmarks/maml_step.py --out=benchmarks/results/maml_step.json

Each configuration runs in its own subprocess (a fresh TensorFlow, so the
first call measures the whole trace and compile) with a time limit, because
`tf.vectorized_map` under XLA can compile for many minutes on a CPU. The
step time is the median over --repeats timings of --steps meta-steps each,
run through `fit` with steps_per_execution=--steps (one compiled call).
"""

import json
import os
import platform
import subprocess
import sys
import time

from absl import app
from absl import flags

flags.DEFINE_string("out", "benchmarks/results/maml_step.json", "JSON output.")
flags.DEFINE_list("modes", ["vectorized", "sequential", "batched"],
                  "Task formulations to measure.")
flags.DEFINE_list("inner_steps", ["1", "5"], "Inner step counts.")
flags.DEFINE_integer("steps", 100, "Meta-steps per timing.")
flags.DEFINE_integer("repeats", 5, "Timings per configuration.")
flags.DEFINE_integer("timeout", 180, "Seconds per configuration.")
flags.DEFINE_string("_child", "", "Internal: run one configuration.")
FLAGS = flags.FLAGS


def child(mode, jit, inner_steps, steps, repeats):
    import numpy as np
    import keras
    import keras_meta
    from examples.maml.config import Config, resolve
    from examples.maml.tasks import SinusoidTask

    keras.utils.set_random_seed(0)
    maml = keras_meta.MAML(SinusoidTask(resolve(Config())).model(), inner_learning_rate=0.01,
                           inner_steps=inner_steps, task_parallelism=mode)
    maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse",
                 jit_compile=jit, steps_per_execution=steps)
    data = keras_meta.data.sinusoid(shots=10, meta_batch_size=25, seed=0)
    data = data.take(steps).cache().repeat()  # keep the input pipeline out
    list(data.take(steps))
    start = time.perf_counter()
    maml.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        maml.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
        times.append((time.perf_counter() - start) / steps)
    return dict(first_call_s=first, step_ms=1000 * float(np.median(times)),
                step_ms_all=[1000 * t for t in times])


def main(argv):
    del argv
    if FLAGS._child:
        mode, jit, inner = FLAGS._child.split(",")
        result = child(mode, jit == "1", int(inner), FLAGS.steps,
                       FLAGS.repeats)
        print("RESULT " + json.dumps(result))
        return
    rows = []
    for inner in FLAGS.inner_steps:
        for mode in FLAGS.modes:
            for jit in ("0", "1"):
                cmd = [sys.executable, __file__, f"--_child={mode},{jit},{inner}",
                       f"--steps={FLAGS.steps}", f"--repeats={FLAGS.repeats}"]
                start = time.time()
                try:
                    out = subprocess.run(cmd, capture_output=True, text=True,
                                         timeout=FLAGS.timeout).stdout
                    line = [l for l in out.splitlines()
                            if l.startswith("RESULT ")]
                    result = json.loads(line[-1][7:]) if line else dict(
                        error="no result")
                except subprocess.TimeoutExpired:
                    result = dict(error=f"timed out after {FLAGS.timeout} s")
                row = dict(mode=mode, xla=jit == "1", inner_steps=int(inner),
                           wall_s=time.time() - start, **result)
                rows.append(row)
                if "error" in row:
                    print(f"{mode:>10} xla={jit} inner={inner}: {row['error']}")
                else:
                    print(f"{mode:>10} xla={jit} inner={inner}: first call "
                          f"{row['first_call_s']:6.1f} s, step "
                          f"{row['step_ms']:6.2f} ms")
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    with open(FLAGS.out, "w") as f:
        json.dump(dict(benchmark="maml_sinusoid_step", machine=platform.platform(),
                       cpus=os.cpu_count(), rows=rows), f, indent=2)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)

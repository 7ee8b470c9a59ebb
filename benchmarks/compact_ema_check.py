"""Does `compact_ema` train as the default does? Fits each workload with
`LearnedOptimizer()`'s configuration with and without `compact_ema` and
compares the rule's state slots after the fit (bitwise) and the
validation loss of the averaged weights.

    python -m benchmarks.compact_ema_check --steps=200 --workload_set=dev

Reads no test split.
"""


import numpy as np
from absl import app
from absl import flags

import keras

from benchmarks.suite import runner
from benchmarks.suite import dev_workloads
from benchmarks.suite import workloads

flags.DEFINE_integer("steps", 200, "Training steps per fit.")
flags.DEFINE_integer("seed", 0, "Seed of the fits and the data.")
flags.DEFINE_enum("workload_set", "dev", ["dev", "held_out"],
                  "Which workloads (only their training and validation "
                  "splits are read).")
FLAGS = flags.FLAGS

DEFAULT = "normalized+ema+dense_table_decay=false"


def _fit(workload, splits, spec):
    keras.utils.set_random_seed(FLAGS.seed)
    model = workload.build()
    optimizer = runner.make_optimizer(runner.learned_spec(spec))
    model.compile(optimizer=optimizer, loss=workload.loss,
                  steps_per_execution=min(runner.STEPS_PER_EXECUTION,
                                          FLAGS.steps))
    x, y = splits.train
    model.fit(runner._dataset(x, y, workload.batch_size, FLAGS.seed),
              epochs=1, steps_per_epoch=FLAGS.steps, shuffle=False, verbose=0)
    state = [s.numpy() for key in optimizer._state_keys
             for s in optimizer._slots[key]]
    return state, model.evaluate(*splits.val, batch_size=500, verbose=0)


def main(argv):
    del argv
    chosen = (dev_workloads.DEV_WORKLOADS if FLAGS.workload_set == "dev"
              else workloads.WORKLOADS)
    print(f"{'workload':22s} {'state elements differing':>25s} "
          f"{'val loss, default':>18s} {'compact_ema':>12s}")
    differing = 0
    for name, workload in chosen.items():
        splits = workload.data(FLAGS.seed)
        state, loss = _fit(workload, splits, DEFAULT)
        compact_state, compact_loss = _fit(workload, splits,
                                           DEFAULT + "+compact_ema")
        count = sum(int(np.sum(a != b)) for a, b in zip(state,
                                                        compact_state))
        differing += count
        print(f"{name:22s} {count:25d} {loss:18.6f} {compact_loss:12.6f}",
              flush=True)
    return 1 if differing else 0


if __name__ == "__main__":
    app.run(main)

"""Per-tensor signals that might say where a learned weight decay helps.

Issue 22's normalized rule carries a learned decay (its MLP's parameter
feature): it helps long runs on small data and caps a clean-label
Transformer's logits (BUILD_NOTES 4.6). This trains development workloads
(`benchmarks/suite/dev_workloads.py`, never the held-out suite) with
`Adam(--lr)` and, every `--every` steps, prints the training and
validation loss and, per trainable tensor, from Adam's own moments:

- `snr`: the RMS over the tensor of `m_hat / sqrt(v_hat)` (1 when every
  step agrees, near 0 when the gradients are noise);
- `radial`: the cosine between the parameter and Adam's update, > 0 when
  the update grows the tensor along itself (its norm).

    python -m benchmarks.decay_signal --workloads=attention_majority,tanh_regression,lstm_products,keywords --steps=5000
"""

import keras
import numpy as np
from absl import app
from absl import flags

from benchmarks import common
from benchmarks.suite import dev_workloads
from benchmarks.suite import runner

FLAGS = flags.FLAGS
flags.DEFINE_list("workloads", ["attention_majority", "tanh_regression",
                                "lstm_products", "keywords"],
                  "Development workloads.")
flags.DEFINE_integer("steps", 5000, "Training steps.")
flags.DEFINE_integer("every", 500, "Steps between readings.")
flags.DEFINE_float("lr", 1e-3, "Adam's learning rate.")
flags.DEFINE_integer("seed", 0, "Data and initialization seed.")
flags.DEFINE_string("out", "decay_signal.json", "JSON file in results/.")


def tensor_signals(optimizer, variables):
    """`{path: {"snr", "radial", "rms"}}` from Adam's bias-corrected
    moments."""
    t = float(optimizer.iterations.numpy())
    out = {}
    for v in variables:
        i = optimizer._get_variable_index(v)
        m = optimizer._momentums[i].numpy() / (1 - optimizer.beta_1 ** t)
        s = optimizer._velocities[i].numpy() / (1 - optimizer.beta_2 ** t)
        p = v.numpy()
        update = -m / (np.sqrt(s) + optimizer.epsilon)
        norms = np.linalg.norm(p) * np.linalg.norm(update)
        out[v.path] = {
            "snr": float(np.sqrt(np.mean(m ** 2 / (s + 1e-30)))),
            "radial": float(np.sum(p * update) / norms) if norms else 0.0,
            "rms": float(np.sqrt(np.mean(p ** 2)))}
    return out


def trace(name):
    """Readings every `--every` steps of one workload's Adam run."""
    workload = dev_workloads.DEV_WORKLOADS[name]
    splits = workload.data(FLAGS.seed)
    keras.utils.set_random_seed(FLAGS.seed)
    model = workload.build()
    optimizer = keras.optimizers.Adam(FLAGS.lr)
    model.compile(optimizer=optimizer, loss=workload.loss)
    readings = []

    class Reader(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            losses = {k: model.evaluate(*getattr(splits, k), batch_size=500,
                                        verbose=0) for k in ("train", "val")}
            readings.append({"step": (epoch + 1) * FLAGS.every, **losses,
                             "tensors": tensor_signals(
                                 optimizer, model.trainable_variables)})

    x, y = splits.train
    model.fit(runner._dataset(x, y, workload.batch_size, FLAGS.seed),
              epochs=FLAGS.steps // FLAGS.every, steps_per_epoch=FLAGS.every,
              verbose=0, callbacks=[Reader()])
    return readings


def main(argv):
    del argv
    results = {}
    for name in FLAGS.workloads:
        readings = results[name] = trace(name)
        print(f"\n{name}: Adam({FLAGS.lr})")
        common.print_table(
            ["step", "train loss", "val loss", "snr median", "radial median",
             "radial max"],
            [[r["step"], f"{r['train']:.4f}", f"{r['val']:.4f}",
              f"{np.median([s['snr'] for s in r['tensors'].values()]):.3f}",
              f"{np.median([s['radial'] for s in r['tensors'].values()]):+.3f}",
              f"{max(s['radial'] for s in r['tensors'].values()):+.3f}"]
             for r in readings])
        common.print_table(
            ["tensor (last reading)", "snr", "radial", "rms"],
            [[path, f"{s['snr']:.3f}", f"{s['radial']:+.3f}",
              f"{s['rms']:.3f}"]
             for path, s in readings[-1]["tensors"].items()])
    common.write_json(FLAGS.out, {"lr": FLAGS.lr, "seed": FLAGS.seed,
                                  "steps": FLAGS.steps, "results": results})


if __name__ == "__main__":
    app.run(main)

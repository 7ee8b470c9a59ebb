"""Which tensors' learned weight decay helps or hurts a dev workload.

Trains one development workload (`benchmarks/suite/dev_workloads.py`,
never the held-out suite) with the shipped `normalized` rule and EMA, as
`lopt_suite`'s `normalized+ema` does, but with the rule's learned decay
(its MLP's parameter feature) removed on some tensors only: those tensors
get `normalized+ema+ablate=parameter_feature`, the others `normalized+ema`
(two optimizers in one training loop). Prints the final train,
validation and test loss, means over `--seeds`, per `--exempt` setting:

- `none`: every tensor keeps the decay (`normalized+ema`);
- `all`: no tensor does (`+ablate=parameter_feature`);
- `A:B`: the weights of the model's top-level layers of the classes named
  (e.g. `Embedding:LayerNormalization`), `output` the last layer with
  weights.

    python -m benchmarks.decay_exemption --workload=attention_majority --steps=5000 --seeds=3 --exempt=none,all,Embedding,output,LayerNormalization:output
"""

import keras
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

from benchmarks import common
from benchmarks.suite import dev_workloads
from benchmarks.suite import runner

FLAGS = flags.FLAGS
flags.DEFINE_string("workload", "attention_majority", "A dev workload.")
flags.DEFINE_integer("steps", 5000, "Training steps.")
flags.DEFINE_integer("seeds", 3, "Seeds 0..seeds-1 (data, initialization).")
flags.DEFINE_list("exempt", ["none", "all"], "Settings (see docstring; "
                  "':' separates substrings within one setting).")
flags.DEFINE_string("out", "decay_exemption.json", "JSON file in results/.")

WITH_DECAY = ("learned", "normalized", ("ema",))
WITHOUT_DECAY = ("learned", "normalized", ("ablate=parameter_feature", "ema"))


def exempted(setting, model):
    """One bool per trainable variable: True where the decay is removed."""
    variables = model.trainable_variables
    if setting in ("none", "all"):
        return [setting == "all"] * len(variables)
    names = setting.split(":")
    layers = [layer for layer in model.layers if layer.trainable_weights]
    chosen = {id(w) for layer in layers for w in layer.trainable_weights
              if type(layer).__name__ in names}
    if "output" in names:
        chosen |= {id(w) for w in layers[-1].trainable_weights}
    return [id(v) in chosen for v in variables]


def train(workload, setting, seed):
    """Final losses of one run, and the exempted variables' paths."""
    splits = workload.data(seed)
    keras.utils.set_random_seed(seed)
    model = workload.build()
    variables = model.trainable_variables
    mask = exempted(setting, model)
    groups = [(runner.make_optimizer(spec),
               [v for v, m in zip(variables, mask) if m == exempt])
              for spec, exempt in ((WITH_DECAY, False),
                                   (WITHOUT_DECAY, True))]
    groups = [(opt, vs) for opt, vs in groups if vs]
    for opt, vs in groups:
        opt.build(vs)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = workload.loss(y, model(x, training=True))
        grads = dict(zip((id(v) for v in variables),
                         tape.gradient(loss, variables)))
        for opt, vs in groups:
            opt.apply([grads[id(v)] for v in vs], vs)

    batches = iter(runner._dataset(*splits.train, workload.batch_size,
                                   seed))
    for _ in range(FLAGS.steps):
        step(*next(batches))
    for opt, vs in groups:
        opt.finalize_variable_values(vs)  # the EMA weights, as fit does
    model.compile(loss=workload.loss, metrics=[workload.metric])
    losses = {name: model.evaluate(x, y, batch_size=500, verbose=0,
                                   return_dict=True)["loss"]
              for name, (x, y) in splits.items()}
    return losses, [v.path for v, m in zip(variables, mask) if m]


def main(argv):
    del argv
    workload = dev_workloads.DEV_WORKLOADS[FLAGS.workload]
    rows = []
    for setting in FLAGS.exempt:
        runs = [train(workload, setting, seed)
                for seed in range(FLAGS.seeds)]
        rows.append({"exempt": setting, "tensors": runs[0][1],
                     "runs": [losses for losses, _ in runs],
                     **{k: float(np.mean([r[0][k] for r in runs]))
                        for k in ("train", "val", "test")}})
    common.print_table(
        ["exempt", "tensors exempted", "train loss", "val loss",
         "test loss (mean)", "test loss per seed"],
        [[r["exempt"], len(r["tensors"]), f"{r['train']:.5f}",
          f"{r['val']:.5f}", f"{r['test']:.5f}",
          " ".join(f"{x['test']:.4f}" for x in r["runs"])] for r in rows])
    common.write_json(FLAGS.out, {"workload": FLAGS.workload,
                                  "steps": FLAGS.steps, "seeds": FLAGS.seeds,
                                  "rows": rows})


if __name__ == "__main__":
    app.run(main)

"""A saved Omniglot ProtoNet's or ProtoMAML's validation accuracy with
support views.

For each support shift s, the N-way 1-shot query accuracy on `--episodes`
episodes of the training script's validation characters (`--queries` per
class, a fixed seed), each prototype the mean embedding of its support
image moved by every offset of up to s pixels (`ProtoNet(support_shift=s)`;
s = 0: the image alone; `ProtoMAML(support_shift=s)` starts its head at
those prototypes and takes `--inner_steps` steps on the support set);
for a ProtoNet also with each of `--transductive_steps` (rounds of soft
k-means over the episode's queries, `ProtoNet(transductive_steps=t)`).
BUILD_NOTES 4.3 chose the script's settings with it, on validation
characters only:

    python -m benchmarks.support_views --model_dir=runs/i20/R --episodes=60 --shifts=0,1,2,3
"""

import keras
from absl import app
from absl import flags

import keras_meta

from benchmarks import common
from examples.maml import config as config_lib
from examples.maml import tasks

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "A ProtoNet or --variant=proto_maml "
                    "run of examples/train_maml.py (its model.keras).")
flags.DEFINE_string("data_dir", "../shared/data/omniglot",
                    "The Omniglot zips the run trained on.")
flags.DEFINE_list("shifts", ["0", "1", "2", "3"], "Support shifts s.")
flags.DEFINE_integer("episodes", 60, "Validation episodes.")
flags.DEFINE_integer("ways", 20, "Classes per episode.")
flags.DEFINE_integer("queries", 15, "Queries per class (the script's "
                     "evaluation uses 15).")
flags.DEFINE_integer("inner_steps", 1, "ProtoMAML: inner steps on the "
                     "support set.")
flags.DEFINE_list("transductive_steps", ["0"], "ProtoNet: rounds of soft "
                  "k-means over the queries (each).")
flags.DEFINE_string("out", "support_views.json", "JSON file in results/.")

SEED = 777


def validation_episodes():
    """The script's validation characters (examples/maml/tasks.py)."""
    config = config_lib.resolve(config_lib.Config(
        task="omniglot", learner="protonet", ways=FLAGS.ways,
        data_dir=FLAGS.data_dir))
    return keras_meta.data.episodes(
        tasks.make_task(config).validation, ways=FLAGS.ways, shots=1,
        queries=FLAGS.queries, meta_batch_size=1, seed=SEED)


def accuracy(learner, shift, rounds):
    learner.support_shift = shift
    if isinstance(learner, keras_meta.ProtoNet):
        learner.transductive_steps = rounds

        def predict(episode):
            return learner(episode, training=False)
    else:
        def predict(episode):
            return learner.task_results(
                episode, steps=FLAGS.inner_steps)["predictions"]
    correct = total = 0
    for episode in validation_episodes().take(FLAGS.episodes):
        logits = predict(episode).numpy()
        correct += int((logits.argmax(-1) == episode["query_y"].numpy())
                       .sum())
        total += logits.shape[0] * logits.shape[1]
    return correct / total, total


def main(argv):
    del argv
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir: give a ProtoNet or ProtoMAML run "
                             "directory.")
    learner = keras.models.load_model(f"{FLAGS.model_dir}/model.keras")
    if not isinstance(learner, (keras_meta.ProtoNet, keras_meta.ProtoMAML)):
        raise app.UsageError(
            f"{FLAGS.model_dir}/model.keras holds a "
            f"{type(learner).__name__}, not a ProtoNet or a ProtoMAML.")
    rounds = [int(t) for t in FLAGS.transductive_steps]
    if not isinstance(learner, keras_meta.ProtoNet) and rounds != [0]:
        raise app.UsageError("--transductive_steps: ProtoNet runs only.")
    rows = []
    for shift in (int(s) for s in FLAGS.shifts):
        for t in rounds:
            value, queries = accuracy(learner, shift, t)
            rows.append({"support_shift": shift, "transductive_steps": t,
                         "accuracy": value, "queries": queries})
    common.print_table(
        ["support shift", "transductive steps", "validation accuracy %",
         "queries"],
        [[r["support_shift"], r["transductive_steps"],
          f"{100 * r['accuracy']:.2f}", r["queries"]] for r in rows])
    common.write_json(FLAGS.out, {"model_dir": FLAGS.model_dir,
                                  "episodes": FLAGS.episodes,
                                  "ways": FLAGS.ways, "seed": SEED,
                                  "queries": FLAGS.queries,
                                  "learner": type(learner).__name__,
                                  "inner_steps": FLAGS.inner_steps,
                                  "rows": rows})


if __name__ == "__main__":
    app.run(main)

"""The task families of the MAML application: each supplies the network,
the loss and metrics, the episode streams (train, validation, test) and the
held-out evaluation table."""

import keras
import numpy as np

import keras_meta
from keras_meta import evaluation


class SinusoidTask:
    """Sinusoid regression (Finn et al. 2017, section 5.1)."""

    loss = "mse"
    metrics = ()
    metric_name = "query MSE"

    def __init__(self, config):
        self.config = config

    def model(self):
        return keras.Sequential([
            keras.Input((1,)),
            keras.layers.Dense(40, activation="relu"),
            keras.layers.Dense(40, activation="relu"),
            keras.layers.Dense(1),
        ], name="sinusoid_regressor")

    def inner_learning_rate(self):
        return self.config.inner_lr

    def train_episodes(self, skip_batches=0):
        c = self.config
        return keras_meta.data.sinusoid(
            shots=c.shots, queries=c.queries,
            meta_batch_size=c.meta_batch_size, seed=c.seed,
            skip_batches=skip_batches)

    def validation_episodes(self):
        c = self.config
        return keras_meta.data.sinusoid(
            shots=c.shots, queries=c.queries,
            meta_batch_size=c.meta_batch_size, seed=20_000 + c.seed)

    def test_episodes(self, shots):
        return keras_meta.data.sinusoid(
            shots=shots, queries=self.config.eval_queries,
            meta_batch_size=250, seed=10_000 + self.config.seed)

    def check(self):
        """Builds every episode stream the run will use, so that a bad
        setting fails before training (the streams check their own)."""
        self.train_episodes()
        self.validation_episodes()
        for shots in self.config.eval_shots:
            self.test_episodes(shots)

    def table(self, maml):
        c = self.config
        return evaluation.few_shot_table(
            maml, self.test_episodes, shots=c.eval_shots, steps=c.eval_steps,
            num_tasks=c.eval_tasks)

    def format(self, rows):
        return evaluation.format_table(rows, "query MSE")

    def example_episode(self):
        return None


class OmniglotTask:
    """N-way K-shot Omniglot, classes split by alphabet.

    Offline (`data_dir` holds the official zips): the test classes are the
    alphabets in `test_alphabets`; 15% of the other characters are held
    out for validation; the rest train. Through TFDS (no `data_dir`): the
    reference split, 1,100 train, 100 validation and the rest test
    characters in a fixed random order. Training augments with 90-degree
    rotations as new classes; evaluation uses unrotated held-out classes.
    """

    metric_name = "query accuracy"

    def __init__(self, config):
        self.config = config
        self.loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True)
        self.metrics = ("accuracy",)
        self.train, self.validation, self.test = self._split()

    def _split(self):
        c = self.config
        rng = np.random.RandomState(1)
        if c.data_dir:
            data = keras_meta.data.load_omniglot(c.data_dir)
            unknown = sorted(set(c.test_alphabets) - set(data.groups))
            if unknown:
                raise ValueError(
                    f"--test_alphabets names {unknown}, not in {c.data_dir}; "
                    f"alphabets there: {data.groups}.")
            test = data.subset(groups=c.test_alphabets)
            rest = data.subset(groups=[g for g in data.groups
                                       if g not in c.test_alphabets])
            order = rng.permutation(rest.num_classes)
            cut = int(round(0.15 * rest.num_classes))
            return (rest.subset(classes=order[cut:]),
                    rest.subset(classes=order[:cut]), test)
        parts = [keras_meta.data.load_tfds("omniglot", split=s,
                                           image_size=(28, 28))
                 for s in ("train", "test")]
        images = np.concatenate([p.images for p in parts])
        offset = parts[0].num_classes
        labels = np.concatenate([parts[0].labels, parts[1].labels + offset])
        data = keras_meta.data.ImageClasses(
            images, labels, parts[0].class_names + parts[1].class_names,
            (parts[0].class_groups or []) + (parts[1].class_groups or []))
        order = rng.permutation(data.num_classes)
        return (data.subset(classes=order[:1100]),
                data.subset(classes=order[1100:1200]),
                data.subset(classes=order[1200:]))

    def model(self):
        return keras_meta.models.conv4_classifier(
            self.config.ways, filters=self.config.filters,
            strided=self.config.strided is not False)

    def inner_learning_rate(self):
        # The reference sums the inner cross-entropy over the N classes
        # (divides by K only); a Keras loss averages over all N*K examples,
        # so the same step needs N times the rate.
        return self.config.inner_lr * self.config.ways

    def _episodes(self, classes, queries, seed, rotations, skip_batches=0,
                  meta_batch_size=None, shots=None, shift=0, distort=0.0,
                  flips=False):
        c = self.config
        return keras_meta.data.episodes(
            classes, ways=c.ways, shots=shots or c.shots, queries=queries,
            meta_batch_size=meta_batch_size or c.meta_batch_size, seed=seed,
            rotations=rotations, skip_batches=skip_batches, shift=shift,
            distort=distort, flips=flips)

    def train_episodes(self, skip_batches=0):
        return self._episodes(self.train, self.config.queries,
                              self.config.seed, True, skip_batches,
                              shift=self.config.train_shift,
                              distort=self.config.train_distort,
                              flips=self.config.train_flips)

    def validation_episodes(self):
        return self._episodes(self.validation, self.config.eval_queries,
                              20_000 + self.config.seed, False)

    def test_episodes(self, shots):
        return self._episodes(self.test, self.config.eval_queries,
                              10_000 + self.config.seed, False,
                              meta_batch_size=50, shots=shots)

    def check(self):
        """Checks every class split against the settings it will be
        sampled with (training, validation, each evaluation support size),
        so that a bad setting fails before training, naming the split."""
        c = self.config
        splits = [("training", self.train, c.shots, c.queries,
                   c.meta_batch_size, True, c.train_shift, c.train_flips),
                  ("validation", self.validation, c.shots, c.eval_queries,
                   c.meta_batch_size, False, 0, False)]
        splits += [(f"evaluation (--eval_shots={k})", self.test, k,
                    c.eval_queries, 50, False, 0, False)
                   for k in c.eval_shots]
        for (name, classes, shots, queries, batch, rotations, shift,
             flips) in splits:
            try:
                keras_meta.data.check_episode_settings(
                    classes, c.ways, shots, queries, batch, rotations, shift,
                    flips=flips)
            except ValueError as e:
                raise ValueError(
                    f"The {name} classes cannot make the episodes these "
                    f"flags ask for (--ways={c.ways}, shots={shots}, "
                    f"queries={queries}): {e}") from e

    def table(self, maml):
        c = self.config
        rows = []
        for k in c.eval_shots:
            for s in c.eval_steps:
                accuracy = evaluation.adaptation_results(
                    maml, self.test_episodes(k), c.eval_tasks, s)["accuracy"]
                mean, ci = evaluation.mean_confidence_interval(accuracy)
                rows.append(dict(ways=c.ways, shots=k, steps=s, mean=mean,
                                 ci=ci, tasks=c.eval_tasks))
        return rows

    def format(self, rows):
        return evaluation.format_table(rows, "query accuracy %", scale=100,
                                       digits=2)

    def example_episode(self):
        return next(iter(self.train_episodes()))


def make_task(config):
    """The task family that a resolved `config` names."""
    return (SinusoidTask if config.task == "sinusoid" else OmniglotTask)(
        config)

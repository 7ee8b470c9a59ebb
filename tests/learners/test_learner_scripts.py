"""examples/train_maml.py --learner: settings, and tiny runs end to end."""

import dataclasses
import json

import keras
import numpy as np
import pytest

import keras_meta
from examples.maml import config as maml_config
from examples.maml import learners
from examples.maml import tasks
from examples.maml import train


def resolve(**kwargs):
    return maml_config.resolve(maml_config.Config(**kwargs))


def test_maml_cpu_and_paper_defaults_and_learners_bring_theirs():
    maml = resolve(task="omniglot", ways=20)
    assert (maml.learner, maml.meta_lr, maml.inner_steps,
            maml.meta_batch_size, maml.eval_inner_steps,
            maml.eval_steps) == ("maml", 1e-3, 1, 8, 3, (3,))
    paper = resolve(task="omniglot", ways=20, paper_settings=True)
    assert (paper.inner_steps, paper.meta_batch_size, paper.eval_inner_steps,
            paper.inner_lr) == (5, 16, 5, 0.1)
    five = resolve(task="omniglot", ways=5)
    assert dataclasses.replace(five, paper_settings=True) == resolve(
        task="omniglot", ways=5, paper_settings=True)
    assert (five.inner_steps, five.meta_batch_size) == (1, 32)
    explicit = resolve(task="omniglot", ways=20, paper_settings=True,
                       inner_steps=2)
    assert explicit.inner_steps == 2
    protonet = resolve(task="omniglot", ways=20, learner="protonet")
    assert (protonet.train_ways, protonet.queries, protonet.meta_batch_size,
            protonet.train_shift) == (30, 5, 1, 3)
    paper = resolve(task="omniglot", learner="protonet", paper_settings=True)
    assert (paper.train_ways, paper.train_shift) == (60, 0)
    assert (protonet.train_flips, paper.train_flips,
            maml.train_flips) == (True, False, False)
    assert (protonet.support_shift, paper.support_shift,
            maml.support_shift) == (3, 0, 0)
    reptile = resolve(learner="reptile")
    assert (reptile.meta_lr, reptile.eval_steps) == (0.1, (1, 10))
    assert (maml.train_shift, reptile.train_shift, resolve(
        task="omniglot", learner="reptile").train_shift) == (0, 0, 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(learner="protonet"), "--learner=protonet does not apply to "
     "--task=sinusoid"),
    (dict(learner="reptile", variant="meta_sgd"), "leave --variant unset"),
    (dict(learner="protonet", task="omniglot", zero_head=True),
     "--zero_head is a MAML option; --learner=protonet does not take it"),
    (dict(task="omniglot", learner="protonet", train_ways=1),
     "--train_ways must be >= 2"),
    (dict(task="omniglot", train_shift=-1),
     "--train_shift must be an int >= 0; got -1"),
    (dict(train_shift=2), "--task=sinusoid has none"),
    (dict(task="omniglot", learner="finetune", train_shift=2),
     "--learner=finetune pretrains on pooled images"),
    (dict(task="omniglot", train_distort=-1.0),
     "--train_distort must be a finite number >= 0; got -1.0"),
    (dict(task="omniglot", train_distort=3.5),
     "--train_distort must be at most 3.0 .*got 3.5"),
    (dict(train_distort=0.5), "--task=sinusoid has none"),
    (dict(task="omniglot", learner="finetune", train_distort=0.5),
     "--train_distort=0.5 augments episodes"),
    (dict(train_flips=True), "--train_flips mirrors images; "
     "--task=sinusoid has none"),
    (dict(task="omniglot", learner="finetune", train_flips=True),
     "--train_flips=True augments episodes"),
    (dict(task="omniglot", learner="reptile", support_shift=1),
     "--support_shift=1 is an option of --learner=protonet and "
     "--variant=proto_maml; --learner=reptile"),
    (dict(task="omniglot", variant="anil", support_shift=1),
     "--learner=maml --variant=anil does not take it"),
    (dict(task="omniglot", learner="protonet", support_shift=-1),
     "--support_shift must be an int >= 0; got -1"),
    (dict(task="omniglot", variant="proto_maml", transductive_steps=1),
     "--transductive_steps=1 is a --learner=protonet option; "
     "--learner=maml"),
    (dict(task="omniglot", learner="protonet", transductive_steps=-2),
     "--transductive_steps must be an int >= 0; got -2"),
])
def test_settings_a_learner_cannot_use_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resolve(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("learner", ["reptile", "finetune"])
def test_sinusoid_runs_save_a_model_and_report_the_table(tmp_path, learner):
    config = maml_config.Config(
        learner=learner, model_dir=str(tmp_path / learner), train_steps=4,
        steps_per_epoch=2, eval_tasks=20, eval_shots=(5,), eval_steps=(1, 2),
        inner_steps=2, eval_inner_steps=2, verbose=0)
    results = train.run(config)
    assert [r["steps"] for r in results["table"]] == [1, 2]
    model = keras.models.load_model(results["model_path"])
    assert type(model).__name__ == {"reptile": "Reptile",
                                    "finetune": "FineTune"}[learner]


def test_train_shift_moves_training_images_only(omniglot_dir):
    task = None

    def streams(shift):
        nonlocal task
        config = resolve(task="omniglot", ways=5, data_dir=omniglot_dir,
                         train_shift=shift)
        if task is None:  # load the data once
            task = tasks.make_task(config)
        task.config = config
        task.check()
        protonet = resolve(task="omniglot", learner="protonet", ways=5,
                           data_dir=omniglot_dir, train_shift=shift)
        return [next(iter(s)) for s in (
            learners.train_episodes(config, task, 0),
            learners.train_episodes(protonet, task, 0),
            task.validation_episodes())]

    (maml0, proto0, valid0), (maml2, proto2, valid2) = streams(0), streams(2)
    for before, after in ((maml0, maml2), (proto0, proto2)):
        for key in before:  # the same classes and drawings, moved
            same = np.array_equal(before[key].numpy(), after[key].numpy())
            assert same == key.endswith("_y"), key
    for key in valid0:
        np.testing.assert_array_equal(valid0[key], valid2[key])


@pytest.mark.slow
def test_protonet_omniglot_run_reports_held_out_accuracy(tmp_path,
                                                         omniglot_dir):
    config = maml_config.Config(
        task="omniglot", learner="protonet", data_dir=omniglot_dir,
        model_dir=str(tmp_path / "p"), train_ways=5, train_steps=2,
        steps_per_epoch=2, eval_tasks=50, filters=4, verbose=0,
        # 9 support views, not the default's 49: the same code path, with
        # a fifth of the traced embedding copies (the defaults:
        # test_maml_cpu_and_paper_defaults_and_learners_bring_theirs).
        support_shift=1)
    results = train.run(config)
    row, = results["table"]
    assert "steps" not in row and row["tasks"] == 50
    assert 0.2 < row["mean"] <= 1.0  # 5-way: chance is 20%
    protonet = keras.models.load_model(results["model_path"])
    assert isinstance(protonet, keras_meta.ProtoNet)
    assert dataclasses.asdict(config)["learner"] == "protonet"
    # The saved model evaluated on 3-way episodes, nothing trained.
    again = train.evaluate_saved(dataclasses.replace(config, ways=3,
                                                     eval_tasks=30))
    row, = again["table"]
    assert row["tasks"] == 30 and 1 / 3 < row["mean"] <= 1.0
    assert (tmp_path / "p" / "evaluation-3way.json").exists()
    assert keras.models.load_model(results["model_path"]).count_params() == \
        protonet.count_params()


def test_evaluate_only_refuses_a_missing_run_and_other_ways_for_maml(
        tmp_path):
    config = maml_config.Config(task="omniglot", ways=5,
                                model_dir=str(tmp_path / "m"))
    with pytest.raises(FileNotFoundError, match="needs a finished run"):
        train.evaluate_saved(config)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.keras").write_bytes(b"")
    (tmp_path / "m" / "results.json").write_text(
        json.dumps({"config": {"learner": "maml", "ways": 20}}))
    with pytest.raises(ValueError, match="trained a maml with 20 output"):
        train.evaluate_saved(config)
    # ProtoMAML's head comes from the prototypes: fewer ways pass the
    # check, more do not.
    proto = {"learner": "maml", "variant": "proto_maml", "ways": 20}
    assert train._evaluates_at(proto, 5) and train._evaluates_at(proto, 20)
    assert not train._evaluates_at(proto, 25)
    assert not train._evaluates_at({"learner": "maml", "ways": 20}, 5)
    (tmp_path / "m" / "results.json").write_text(json.dumps({"config": proto}))
    with pytest.raises(ValueError, match="--variant=proto_maml at fewer"):
        train.evaluate_saved(dataclasses.replace(config, ways=25))


def test_runs_recorded_unshifted_resume_only_as_they_trained():
    # A record that predates --train_shift trained unshifted: MAML's resumes
    # as it was; ProtoNet's, whose default is now a shift, is refused unless
    # the run asks for --train_shift=0 again.
    from keras_meta import run_dir
    for kwargs, changes in ((dict(), {}),
                            (dict(learner="protonet"), {"train_shift": (0, 3)}),
                            (dict(learner="protonet", train_shift=0), {})):
        current = dataclasses.asdict(resolve(task="omniglot", **kwargs))
        old = {k: v for k, v in current.items() if k != "train_shift"}
        assert run_dir.config_changes(
            old, current, maml_config.resume_defaults()) == changes


def test_evaluation_settings_reach_a_built_protonet():
    embedding = keras.Sequential([keras.Input((6, 6, 1)),
                                  keras.layers.Flatten(),
                                  keras.layers.Dense(4)])
    protonet = keras_meta.ProtoNet(embedding)
    config = resolve(task="omniglot", learner="protonet",
                     transductive_steps=2)
    learners.apply_evaluation_settings(config, protonet)
    assert (protonet.support_shift, protonet.transductive_steps) == (3, 2)

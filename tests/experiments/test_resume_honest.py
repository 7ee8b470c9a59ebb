"""Issue 19 in the applications: an honest --resume (the saved settings
compared, refused changes named, allowed ones recorded), damaged
checkpoints skipped for the newest intact one, and every flag and data
split checked before the first step. Tiny runs, in-process."""

import json
import os
import re
import shutil
import zipfile

import keras
import numpy as np
import pytest

from keras_meta import run_dir
from keras_meta.callbacks import checkpoints as ckpt_lib
from keras_meta.data import image_classes

from examples import config_flags
from examples.learned_optimizer import config as lopt_config
from examples.learned_optimizer import train as lopt_train
from examples.maml import config as maml_config
from examples.maml import tasks as maml_tasks
from examples.maml import train


def config(model_dir, **overrides):
    values = dict(task="sinusoid", model_dir=str(model_dir), train_steps=2,
                  steps_per_epoch=1, checkpoint_every=1,
                  steps_per_execution=1, meta_batch_size=2, eval_tasks=2,
                  eval_shots=(5,), eval_steps=(1,), eval_queries=5,
                  eval_inner_steps=1, jit_compile=False, keep_checkpoints=3,
                  verbose=0)
    values.update(overrides)
    return maml_config.Config(**values)


def lopt(model_dir, **overrides):
    values = dict(problems=("quadratic",), unroll=2, horizon=4,
                  meta_steps=2, eval_every=2, checkpoint_every=1,
                  keep_checkpoints=3, model_dir=str(model_dir), verbose=0,
                  rule={"hidden_size": 2, "num_layers": 1})
    values.update(overrides)
    return lopt_config.Config(**values)


@pytest.fixture(scope="module")
def maml_run(tmp_path_factory):
    """A finished 2-step MAML run with checkpoints at steps 1 and 2."""
    path = tmp_path_factory.mktemp("maml")
    train.run(config(path / "run"))
    return path / "run"


def copy_run(source, target):
    shutil.copytree(source, target)
    for name in ("model.keras", "results.json"):
        os.remove(os.path.join(target, name))
    return target


def checkpoint_files(model_dir, ext=".keras"):
    return ckpt_lib.checkpoint_paths(os.path.join(model_dir, "checkpoints"),
                                     ext)


# ------------------------------------------------------------ honest resume


@pytest.mark.parametrize("changes, named", [
    (dict(seed=1), ["--seed: 0 -> 1"]),
    (dict(meta_lr=0.01, inner_steps=2),
     ["--inner_steps: 1 -> 2", "--meta_lr: 0.001 -> 0.01"]),
    # Shape- or rule-changing flags: refused before Keras loads anything.
    (dict(variant="maml_plus_plus"), ["--variant: 'maml' -> "
                                      "'maml_plus_plus'"]),
    (dict(inner_optimizer="lstm"), ["--inner_optimizer: 'sgd' -> 'lstm'"]),
    (dict(jit_compile=True), ["--jit_compile: False -> True"]),
])
def test_maml_resume_refuses_changed_settings(maml_run, tmp_path, changes,
                                              named, monkeypatch):
    model_dir = copy_run(maml_run, tmp_path / "run")
    monkeypatch.setattr(train.keras.models, "load_model", _never_called)
    with pytest.raises(run_dir.ResumeRefused) as info:
        train.run(config(model_dir, resume=True, train_steps=3, **changes))
    message = str(info.value)
    for text in named:
        assert text in message
    assert "train_steps" not in message  # an allowed change is not named
    assert len(checkpoint_files(model_dir)) == 2


def _never_called(*args, **kwargs):
    raise AssertionError("a refused resume must not load a checkpoint")


def test_maml_resume_records_allowed_changes(maml_run, tmp_path):
    model_dir = copy_run(maml_run, tmp_path / "run")
    results = train.run(config(model_dir, resume=True, train_steps=3,
                               verbose=2, checkpoint_every=2))
    assert results["meta_steps"] == 3
    assert results["config"]["train_steps"] == 3
    (resume,) = results["resumes"]
    assert resume["step"] == 2
    assert resume["checkpoint"] == "ckpt-000000002.keras"
    assert resume["changed"] == {"checkpoint_every": [1, 2],
                                 "train_steps": [2, 3], "verbose": [0, 2]}
    saved = json.loads((model_dir / "checkpoints" /
                        run_dir.CONFIG_FILE).read_text())
    assert saved["config"]["train_steps"] == 3 and saved["resumes"]
    on_disk = json.loads((model_dir / "results.json").read_text())
    assert on_disk["resumes"] == results["resumes"]


def test_maml_resume_below_the_steps_done_is_refused(maml_run, tmp_path):
    model_dir = copy_run(maml_run, tmp_path / "run")
    with pytest.raises(ValueError, match="--train_steps=1 is below the 2 "
                       "steps this run has already done"):
        train.run(config(model_dir, resume=True, train_steps=1))


# ------------------------------------------------------- damaged checkpoints


def truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])


def empty(path):
    open(path, "wb").close()


def bad_crc(path):
    """Flips a byte inside the first stored member's data."""
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[-1]
    data = bytearray(open(path, "rb").read())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("damage, why", [
    (truncate, "not a complete zip archive"),
    (empty, "empty file"),
    (bad_crc, "bad CRC|damaged zip"),
])
def test_damaged_checkpoints_are_found(maml_run, tmp_path, damage, why):
    model_dir = copy_run(maml_run, tmp_path / "run")
    newest, older = checkpoint_files(model_dir)
    damage(newest)
    assert re.search(why, ckpt_lib.damage(newest))
    assert ckpt_lib.damage(older) is None


def test_maml_resume_falls_back_to_an_intact_checkpoint(maml_run, tmp_path,
                                                        capsys):
    model_dir = copy_run(maml_run, tmp_path / "run")
    newest, older = checkpoint_files(model_dir)
    truncate(newest)
    results = train.run(config(model_dir, resume=True))
    out = capsys.readouterr().out
    assert f"Skipping checkpoint {newest}: not a complete zip" in out
    assert f"Resuming from {older} at step 1." in out
    (resume,) = results["resumes"]
    assert resume["checkpoint"] == os.path.basename(older)
    assert os.path.basename(newest) in resume["skipped"]
    assert results["meta_steps"] == 2


def test_a_checkpoint_that_fails_to_load_is_skipped(maml_run, tmp_path):
    model_dir = copy_run(maml_run, tmp_path / "run")
    newest, older = checkpoint_files(model_dir)
    logged = []

    def load(path):
        if path == newest:
            raise OSError("unreadable weights")
        return "model"

    with run_dir.RunDirectory(str(model_dir), resume=True,
                              log=logged.append) as directory:
        assert directory.load_checkpoint(load) == (older, "model")
    assert logged == [f"Skipping checkpoint {newest}: failed to load "
                      "(OSError: unreadable weights)."]


def test_maml_resume_with_every_checkpoint_damaged_names_each(maml_run,
                                                               tmp_path):
    model_dir = copy_run(maml_run, tmp_path / "run")
    for path in checkpoint_files(model_dir):
        truncate(path)
    with pytest.raises(run_dir.NoIntactCheckpoint) as info:
        train.run(config(model_dir, resume=True))
    for path in checkpoint_files(model_dir):
        assert os.path.basename(path) in str(info.value)


def test_damage_finds_missing_members(tmp_path):
    path = tmp_path / "ckpt-000000001.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("other.txt", "x")
    assert "no config.json, model.weights.h5" in ckpt_lib.damage(str(path))


# --------------------------------------------------- checked before training


@pytest.mark.parametrize("changes, message", [
    (dict(steps_per_epoch=0), "--steps_per_epoch must be an int >= 1; got 0"),
    (dict(train_steps=0), "--train_steps must be an int >= 1; got 0"),
    (dict(train_steps=-5), "--train_steps must be an int >= 1; got -5"),
    (dict(max_train_minutes=0.0), "--max_train_minutes must be a number > "
                                  "0; got 0.0"),
    (dict(meta_lr=float("inf")), "--meta_lr must be a finite number >= 0"),
    (dict(meta_lr=float("nan")), "--meta_lr must be a finite number >= 0"),
    (dict(inner_lr=-0.1), "--inner_lr must be a finite number >= 0"),
    (dict(eval_tasks=0), "--eval_tasks must be an int >= 1; got 0"),
    (dict(eval_steps=(1, 0)), r"--eval_steps must list ints >= 1"),
    (dict(eval_shots=(0,)), r"--eval_shots must list ints >= 1"),
    (dict(checkpoint_every=0), "--checkpoint_every must be an int >= 1"),
    (dict(keep_checkpoints=0), "--keep_checkpoints must be an int >= 1"),
    (dict(steps_per_execution=0), "--steps_per_execution must be an int"),
    (dict(seed=-1), "--seed must be an int >= 0; got -1"),
    (dict(profile=True, profile_batches=(5, 3)),
     "--profile_batches must be two ints"),
    (dict(per_step_bn=True), "--per_step_bn is a MAML\\+\\+ option; it needs "
                             "--variant=maml_plus_plus"),
    (dict(step_weights=(1.0, 2.0, 3.0)),
     "--step_weights needs one weight per inner-step count"),
    (dict(meta_clipnorm=0.0), "--meta_clipnorm must be a finite number > 0"),
])
def test_maml_refuses_bad_flags_before_anything(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        train.run(config(tmp_path / "run", **changes))
    assert not (tmp_path / "run").exists()


def tiny_classes(classes, images_per_class):
    rng = np.random.default_rng(0)
    n = classes * images_per_class
    return image_classes.ImageClasses(
        images=rng.integers(0, 255, (n, 28, 28, 1), dtype=np.uint8),
        labels=np.repeat(np.arange(classes), images_per_class).astype(
            "int32"),
        class_names=[f"c{i}" for i in range(classes)])


@pytest.mark.parametrize("sizes, changes, message", [
    # (classes, images per class) of the training, validation, test splits.
    (((10, 20), (10, 20), (3, 20)), {},
     r"evaluation \(--eval_shots=1\) classes .* ways=5 needs at least 5 "
     "classes; the source has 3"),
    (((10, 20), (10, 5), (10, 20)), {},
     r"validation classes .* shots \+ queries = 16 images per class"),
    (((10, 20), (10, 20), (10, 20)), dict(eval_shots=(1, 19)),
     r"evaluation \(--eval_shots=19\) classes .* = 34 images per class"),
])
def test_omniglot_splits_are_checked_before_training(tmp_path, monkeypatch,
                                                     sizes, changes, message):
    monkeypatch.setattr(maml_tasks.OmniglotTask, "_split", lambda self: tuple(
        tiny_classes(*size) for size in sizes))
    monkeypatch.setattr(train, "_train", _never_called)
    with pytest.raises(ValueError, match=message):
        train.run(config(tmp_path / "run", task="omniglot", ways=5,
                         filters=4, eval_queries=15,
                         **dict(dict(eval_shots=None), **changes)))
    assert not checkpoint_files(tmp_path / "run")


# ------------------------------------------------------- learned optimizer


@pytest.fixture(scope="module")
def lopt_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("lopt") / "run"
    lopt_train.run(lopt(path))
    return path


def copy_lopt(source, target):
    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize("changes, named", [
    (dict(seed=3), "--seed: 0 -> 3"),
    (dict(rule={"hidden_size": 3, "num_layers": 1}), "--hidden_size: 2 -> 3"),
    (dict(unroll=1), "--unroll: 2 -> 1"),
])
def test_lopt_resume_refuses_changed_settings(lopt_run, tmp_path, changes,
                                              named):
    model_dir = copy_lopt(lopt_run, tmp_path / "run")
    with pytest.raises(run_dir.ResumeRefused, match=named):
        lopt_train.run(lopt(model_dir, resume=True, meta_steps=3, **changes))


def test_lopt_resume_skips_a_damaged_checkpoint_and_records(lopt_run,
                                                            tmp_path, capsys):
    model_dir = copy_lopt(lopt_run, tmp_path / "run")
    newest, older = checkpoint_files(model_dir, ".npz")
    truncate(newest)
    summary = lopt_train.run(lopt(model_dir, resume=True, meta_steps=3))
    assert f"Skipping checkpoint {newest}" in capsys.readouterr().out
    (resume,) = summary["resumes"]
    assert resume["checkpoint"] == os.path.basename(older)
    assert resume["changed"] == {"meta_steps": [2, 3]}


def test_lopt_resume_of_a_record_older_than_a_rule_field(lopt_run, tmp_path):
    """A record written before a rule field existed resumes: the missing
    field compares as the rule's default, what that run trained with."""
    model_dir = copy_lopt(lopt_run, tmp_path / "run")
    path = model_dir / "checkpoints" / run_dir.CONFIG_FILE
    record = json.loads(path.read_text())
    rule_defaults = type(lopt_train.build_rule(lopt(model_dir))[0])()
    flag_names = set(config_flags.defaults(lopt_config.Config))
    dropped = [k for k, v in rule_defaults.to_dict().items()
               if k not in flag_names and record["config"].get(k) == v]
    assert dropped
    for name in dropped:
        del record["config"][name]
    path.write_text(json.dumps(record))
    summary = lopt_train.run(lopt(model_dir, resume=True, meta_steps=3))
    assert summary["resumes"][-1]["changed"] == {"meta_steps": [2, 3]}


def test_lopt_checkpoint_load_errors_name_the_file(tmp_path):
    path = tmp_path / "ckpt-000000001.npz"
    np.savez(path, x=np.zeros(2))
    with pytest.raises(ValueError, match=f"Could not read meta-training "
                       f"checkpoint {path}"):
        lopt_train.load_checkpoint(str(path))
    from keras_meta.optimizers import weights_io
    with pytest.raises(ValueError, match="ckpt-000000001.npz"):
        weights_io.load_phi(str(path))


@pytest.mark.parametrize("changes, message", [
    (dict(meta_steps=0), "--meta_steps must be an int >= 1; got 0"),
    (dict(checkpoint_every=0), "--checkpoint_every must be an int >= 1"),
    (dict(eval_every=-1), "--eval_every must be an int >= 1"),
    (dict(horizon=5), r"--horizon \(5\) must be a multiple of --unroll"),
    (dict(meta_lr=float("inf")), "--meta_lr must be a finite number"),
    (dict(clip_norm=0.0), "--clip_norm must be a finite number > 0"),
    (dict(problems=("quadratic", "nope")), "unknown families \\['nope'\\]"),
    (dict(problem_weights=(1.0, 2.0)), "gives 2 weights for 1 --problems"),
    (dict(problem_weights=(0.0,)), "must not all be 0"),
])
def test_lopt_refuses_bad_flags_before_anything(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        lopt_train.run(lopt(tmp_path / "run", **changes))
    assert not (tmp_path / "run").exists()


def test_maml_plus_plus_and_meta_loss_flags_reach_the_model(tmp_path):
    cfg = maml_config.resolve(config(
        tmp_path / "run", variant="maml_plus_plus", inner_steps=2,
        eval_inner_steps=2, step_weights=(3.0, 1.0), meta_clipnorm=1.0,
        per_step_bn=True, first_order_steps=5, cosine_decay_steps=7))
    maml = train.build_maml(cfg, maml_tasks.make_task(cfg))
    assert maml.multi_step_loss == [0.75, 0.25]  # normalized
    assert maml.per_step_bn_statistics and maml.per_step_bn_weights
    assert maml.first_order_steps == 5
    assert maml.optimizer.clipnorm == 1.0
    schedule = maml.optimizer._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert schedule.decay_steps == 7

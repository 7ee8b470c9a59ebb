"""keras_meta.run_dir: one owner per run directory, takeover of a dead
owner's directory, and the resume check."""

import os

import numpy as np
import pytest

from keras_meta import run_dir


def test_second_owner_is_refused_and_a_dead_owner_is_taken_over(
        tmp_path, lock_holder):
    path = tmp_path / "run"
    with lock_holder(path) as pid:
        owner = run_dir.read_owner(str(path))
        assert owner["pid"] == pid and owner["host"]
        with pytest.raises(run_dir.DirectoryInUse) as info:
            run_dir.RunDirectory(str(path)).__enter__()
        assert str(path) in str(info.value)
        assert f"PID {pid} on host {owner['host']}" in str(info.value)
        assert info.value.owner["pid"] == pid
    # Killed with SIGKILL: the OS dropped its lock; its record is stale.
    logs = []
    with run_dir.RunDirectory(str(path), log=logs.append) as run:
        assert run.is_chief and run.write_path == str(path)
        assert run_dir.read_owner(str(path))["pid"] == os.getpid()
        assert logs == [f"Taking over {path} from a run that did not "
                        f"release it ({run_dir.describe_owner(owner)})."]
    # Released cleanly: no record, the next owner takes it silently.
    assert run_dir.read_owner(str(path)) is None
    logs.clear()
    with run_dir.RunDirectory(str(path), log=logs.append):
        pass
    assert logs == []


def test_checkpoints_need_resume(tmp_path):
    path = tmp_path / "run"
    (path / "checkpoints").mkdir(parents=True)
    np.savez(path / "checkpoints" / "ckpt-000000010.npz",
             __info__=np.asarray("{}"))
    with pytest.raises(ValueError, match="pass --resume"):
        with run_dir.RunDirectory(str(path), checkpoint_ext=".npz"):
            pass
    # The refused run released the directory.
    with run_dir.RunDirectory(str(path), resume=True,
                              checkpoint_ext=".npz") as run:
        assert run.latest_checkpoint.endswith("ckpt-000000010.npz")
    with run_dir.RunDirectory(str(path / "fresh"), resume=True) as run:
        assert run.latest_checkpoint is None
        assert run.checkpoints == str(path / "fresh" / "checkpoints")


def test_a_setting_added_later_compares_as_its_default():
    old = {"steps": 10, "lr": 0.1}  # recorded before per_step_bn existed
    new = {**old, "per_step_bn": False}
    defaults = {"steps": 1, "lr": 1.0, "per_step_bn": False}
    assert run_dir.config_changes(old, new, defaults) == {}
    assert run_dir.config_changes(old, new) == {
        "per_step_bn": (None, False)}
    assert run_dir.config_changes(
        old, {**old, "per_step_bn": True}, defaults) == {
        "per_step_bn": (False, True)}
    assert run_dir.config_changes(old, {**new, "lr": 0.2}, defaults) == {
        "lr": (0.1, 0.2)}

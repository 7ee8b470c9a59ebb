"""The directory of a training run: ownership, resume and chief-only writes.

One process at a time owns a run directory. `RunDirectory` takes an
exclusive `filelock` lock on `<path>/.lock` and records its owner (PID,
host, start time) in `<path>/.owner.json`; a second process that asks for
the same directory gets a `DirectoryInUse` error that names the directory
and its owner. The lock is the operating system's (`flock`), so it dies
with its process: a run killed with SIGKILL leaves only its owner record,
and the next run takes the directory over and says whose it was.

A run's configuration is saved beside its checkpoints
(`checkpoints/run_config.json`). `--resume` compares the new configuration
with it before any checkpoint is loaded: a change to a setting that is not
in the application's `may_change` list is refused (`ResumeRefused`, naming
each flag with its old and new value); allowed changes are recorded in the
file's `resumes` list, which the application copies into its results.
Checkpoints are verified when found (`checkpoints.damage`) and when loaded:
resuming falls back to the newest intact one and says which it skipped and
why.

Under a multi-worker `tf.distribute` strategy only the chief writes to the
directory (and takes the lock); the other workers write to a temporary
directory that is deleted on exit, and all of them read the chief's
checkpoints to resume.

Example:

```python
with RunDirectory("runs/x", resume=flags.resume, config=settings,
                  may_change={"train_steps", "verbose"}) as run:
    if run.latest_checkpoint:
        path, model = run.load_checkpoint(keras.models.load_model)
    run.record_config(step)
    ...
    model.fit(..., callbacks=[PeriodicCheckpoint(run.checkpoints)])
```
"""

import json
import os
import shutil
import socket
import time

import filelock

from keras_meta import distribute
from keras_meta import saving
from keras_meta.callbacks import checkpoints

LOCK_FILE = ".lock"
OWNER_FILE = ".owner.json"
CONFIG_FILE = "run_config.json"


class ResumeRefused(ValueError):
    """`--resume` with settings that would make the run's record false."""


class NoIntactCheckpoint(ValueError):
    """Every checkpoint of the run is damaged or fails to load."""


# Where and how a run is started, not what it trains with: never compared.
NOT_SETTINGS = ("model_dir", "resume")


def _jsonable(config):
    """`config` as JSON gives it back (tuples become lists), without the
    keys in `NOT_SETTINGS`."""
    return json.loads(json.dumps(
        {k: v for k, v in config.items() if k not in NOT_SETTINGS}))


def config_changes(saved, current, defaults=None):
    """`{name: (old, new)}` for every setting that differs, in name order.

    A name `saved` lacks (a setting added after the run was recorded)
    compares as its value in `defaults`, where given.
    """
    defaults = defaults or {}
    names = sorted(set(saved) | set(current))
    old = {name: saved.get(name, defaults.get(name)) for name in names}
    return {name: (old[name], current.get(name)) for name in names
            if old[name] != current.get(name)}


def _flag_list(changes):
    return "; ".join(f"--{name}: {old!r} -> {new!r}"
                     for name, (old, new) in changes.items())


class DirectoryInUse(RuntimeError):
    """Another live process owns the run directory.

    Attributes:
        path: the directory.
        owner: the owner's record (`pid`, `host`, `started`), or None if it
            could not be read.
    """

    def __init__(self, path, owner):
        who = describe_owner(owner)
        super().__init__(
            f"{path} is in use by another run ({who}). Wait for it to "
            "finish, stop it, or choose another directory.")
        self.path = path
        self.owner = owner


def describe_owner(owner):
    """An owner record as words, e.g. 'PID 12 on host h since 10:00:00'."""
    if not owner:
        return "owner unknown"
    started = time.strftime("%Y-%m-%d %H:%M:%S",
                            time.localtime(owner.get("started", 0)))
    return (f"PID {owner.get('pid')} on host {owner.get('host')} since "
            f"{started}")


def read_owner(path):
    """The owner record of run directory `path`, or None."""
    try:
        with open(os.path.join(path, OWNER_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class DirectoryLock:
    """Exclusive ownership of a directory by this process.

    `acquire()` never waits: it raises `DirectoryInUse` when another live
    process holds the lock. Taking over a directory whose owner died
    without releasing it is reported through `log`.

    Args:
        path: the directory (created if needed).
        log: a function of one string.
    """

    def __init__(self, path, log=print):
        self.path = path
        self._log = log
        self._lock = filelock.FileLock(os.path.join(path, LOCK_FILE))

    def acquire(self):
        """Takes the lock and records this process as the owner.

        Raises:
            DirectoryInUse: another live process holds it.
        """
        os.makedirs(self.path, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise DirectoryInUse(self.path, read_owner(self.path)) from None
        stale = read_owner(self.path)
        if stale is not None:
            self._log(f"Taking over {self.path} from a run that did not "
                      f"release it ({describe_owner(stale)}).")
        saving.write_json(os.path.join(self.path, OWNER_FILE), dict(
            pid=os.getpid(), host=socket.gethostname(), started=time.time()))

    def release(self):
        """Drops the owner record, then the lock."""
        if not self._lock.is_locked:
            return
        try:
            os.remove(os.path.join(self.path, OWNER_FILE))
        except FileNotFoundError:
            pass
        self._lock.release()

    @property
    def is_locked(self):
        return self._lock.is_locked


class RunDirectory:
    """A training run's directory, owned while the `with` block runs.

    Attributes:
        path: the run directory every worker names (the chief's).
        write_path: where this process writes: `path` on the chief, a
            temporary directory on other workers.
        checkpoints: the checkpoint folder under `write_path`.
        latest_checkpoint: the newest complete checkpoint in the chief's
            `path/checkpoints` (with extension `checkpoint_ext`), or None.
        is_chief: whether this process writes `path`.

    Args:
        path: the run directory.
        resume: continue from `latest_checkpoint`. Without it, a directory
            that already holds checkpoints is refused (`ValueError`) rather
            than silently restarted.
        strategy: the `tf.distribute` strategy (None: the current one).
        checkpoint_ext: extension of this run's checkpoint files.
        log: where a takeover of a dead owner's directory, a skipped
            checkpoint or a run without a saved configuration is reported.
        config: the run's settings, a JSON-able dict of flag name to value
            (None: not recorded or compared); `NOT_SETTINGS` are left out.
        may_change: names of settings that may differ on resume (logging,
            checkpoint cadence, longer training); any other difference is
            refused with `ResumeRefused` when the directory is entered.
        defaults: the settings' default values: a setting that a run's
            record lacks (added in a later release) compares as its default.
    """

    def __init__(self, path, resume=False, strategy=None,
                 checkpoint_ext=".keras", log=print, config=None,
                 may_change=(), defaults=None):
        self.path = path
        self.resume = resume
        self.is_chief = distribute.is_chief(strategy)
        self.write_path = distribute.write_dir(path, strategy)
        self.checkpoints = os.path.join(self.write_path, "checkpoints")
        self.latest_checkpoint = None
        self._checkpoint_ext = checkpoint_ext
        self._lock = DirectoryLock(path, log) if self.is_chief else None
        self._log = log
        self._config = None if config is None else _jsonable(config)
        self._may_change = set(may_change)
        self._defaults = None if defaults is None else _jsonable(defaults)
        self._record = None
        self._changes = {}
        self._candidates = []
        self.loaded_checkpoint = None
        self.skipped_checkpoints = []

    def __enter__(self):
        os.makedirs(self.write_path, exist_ok=True)
        if self._lock is not None:
            self._lock.acquire()
        try:
            self._find_checkpoint()
        except BaseException:
            self._close()
            raise
        return self

    def _find_checkpoint(self):
        shared = os.path.join(self.path, "checkpoints")
        paths = checkpoints.checkpoint_paths(shared, self._checkpoint_ext)
        if paths and not self.resume:
            raise ValueError(
                f"{shared} already holds checkpoints; pass --resume to "
                "continue that run or choose a new --model_dir.")
        for path in paths:
            why = checkpoints.damage(path)
            if why is None:
                self._candidates.append(path)
            else:
                self._skip(path, why)
        if paths and not self._candidates:
            self._no_intact_checkpoint(shared)
        self.latest_checkpoint = (self._candidates[0] if self._candidates
                                  else None)
        if self.latest_checkpoint and self._config is not None:
            self._compare_config(shared)

    def _skip(self, path, why):
        self.skipped_checkpoints.append((path, why))
        self._log(f"Skipping checkpoint {path}: {why}.")

    def _no_intact_checkpoint(self, folder):
        listing = "; ".join(f"{os.path.basename(p)}: {why}"
                            for p, why in self.skipped_checkpoints)
        raise NoIntactCheckpoint(
            f"--resume found no intact checkpoint in {folder} ({listing}). "
            "Nothing was changed; restore a checkpoint from a backup, or "
            "start afresh in a new --model_dir.")

    def _compare_config(self, folder):
        """Refuses a resume whose settings differ where they may not."""
        try:
            with open(os.path.join(folder, CONFIG_FILE)) as f:
                self._record = json.load(f)
            saved = self._record["config"]
        except (OSError, ValueError, KeyError, TypeError):
            self._log(f"{folder} has no readable {CONFIG_FILE} (a run from "
                      "an earlier release?): the settings of this resume "
                      "cannot be compared with the run's.")
            self._record = None
            return
        changes = config_changes(saved, self._config, self._defaults)
        refused = {k: v for k, v in changes.items()
                   if k not in self._may_change}
        if refused:
            raise ResumeRefused(
                f"--resume in {self.path} with settings that differ from "
                f"the run's ({_flag_list(refused)}); the checkpoints were "
                "trained with the old values, so the results would record "
                "settings that were not used. Resume with the old values, "
                "or start a new --model_dir.")
        self._changes = changes

    def load_checkpoint(self, load):
        """`(path, load(path))` for the newest checkpoint that loads.

        A checkpoint that `load` fails on is skipped (and reported) in
        favor of the next older one.

        Raises:
            NoIntactCheckpoint: none loads; the message names each file
                and why.
        """
        for path in self._candidates:
            try:
                value = load(path)
            except Exception as e:  # noqa: BLE001 -- reported per file
                self._skip(path, f"failed to load ({type(e).__name__}: {e})")
                continue
            self.loaded_checkpoint = path
            return path, value
        self._no_intact_checkpoint(os.path.dirname(self._candidates[0])
                                   if self._candidates else self.path)

    def record_config(self, step):
        """Writes the run's configuration beside its checkpoints (chief
        only) and returns the resumes so far: a list of `{"step",
        "checkpoint", "changed": {name: [old, new]}, "skipped":
        {file: why}}`, the newest last."""
        if self._config is None:
            return []
        resumes = list((self._record or {}).get("resumes", []))
        if self.loaded_checkpoint:
            resumes.append(dict(
                step=step,
                checkpoint=os.path.basename(self.loaded_checkpoint),
                changed={k: list(v) for k, v in self._changes.items()},
                skipped={os.path.basename(p): why
                         for p, why in self.skipped_checkpoints},
                config_compared=self._record is not None))
        if self.is_chief:
            saving.write_json(
                os.path.join(self.path, "checkpoints", CONFIG_FILE),
                dict(config=self._config, resumes=resumes))
        return resumes

    def __exit__(self, *exc):
        self._close()
        return False

    def _close(self):
        if self._lock is not None:
            self._lock.release()
        if not self.is_chief:
            shutil.rmtree(self.write_path, ignore_errors=True)

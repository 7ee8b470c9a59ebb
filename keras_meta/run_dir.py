"""The directory of a training run: ownership, resume and chief-only writes.

One process at a time owns a run directory. `RunDirectory` takes an
exclusive `filelock` lock on `<path>/.lock` and records its owner (PID,
host, start time) in `<path>/.owner.json`; a second process that asks for
the same directory gets a `DirectoryInUse` error that names the directory
and its owner. The lock is the operating system's (`flock`), so it dies
with its process: a run killed with SIGKILL leaves only its owner record,
and the next run takes the directory over and says whose it was.

Under a multi-worker `tf.distribute` strategy only the chief writes to the
directory (and takes the lock); the other workers write to a temporary
directory that is deleted on exit, and all of them read the chief's
checkpoints to resume.

Example:

```python
with RunDirectory("runs/x", resume=flags.resume) as run:
    if run.latest_checkpoint:
        model = keras.models.load_model(run.latest_checkpoint)
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
        log: where a takeover of a dead owner's directory is reported.
    """

    def __init__(self, path, resume=False, strategy=None,
                 checkpoint_ext=".keras", log=print):
        self.path = path
        self.resume = resume
        self.is_chief = distribute.is_chief(strategy)
        self.write_path = distribute.write_dir(path, strategy)
        self.checkpoints = os.path.join(self.write_path, "checkpoints")
        self.latest_checkpoint = None
        self._checkpoint_ext = checkpoint_ext
        self._lock = DirectoryLock(path, log) if self.is_chief else None

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
        latest = checkpoints.latest_checkpoint(shared, self._checkpoint_ext)
        if latest and not self.resume:
            raise ValueError(
                f"{shared} already holds checkpoints; pass --resume to "
                "continue that run or choose a new --model_dir.")
        self.latest_checkpoint = latest

    def __exit__(self, *exc):
        self._close()
        return False

    def _close(self):
        if self._lock is not None:
            self._lock.release()
        if not self.is_chief:
            shutil.rmtree(self.write_path, ignore_errors=True)

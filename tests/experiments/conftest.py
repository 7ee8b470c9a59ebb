"""The applications under examples/ are not installed: their tests import
them from the repository root."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import contextlib  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402

HOLDER = """
import sys, time
from keras_meta import run_dir
lock = run_dir.DirectoryLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def lock_holder():
    """`with lock_holder(path) as pid`: another process owns `path` (a
    `keras_meta.run_dir.DirectoryLock`) inside the block and is killed
    with SIGKILL at its end, leaving a stale owner record."""

    @contextlib.contextmanager
    def hold(path):
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE,
            text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                [ROOT, os.environ.get("PYTHONPATH", "")])))
        try:
            assert process.stdout.readline().strip() == "locked"
            yield process.pid
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()

    return hold

"""Turn SIGTERM / SIGINT into a flag that training loops poll between steps.

A signal handler must not write checkpoints itself (it can run in the
middle of a step or of a file write); it only records the signal, and the
loop saves and stops at the next step boundary.
"""

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Records the first SIGTERM/SIGINT while installed.

    Handlers can only be installed from the main thread; elsewhere this is
    a no-op and `signum` stays None.

    Example:

    ```python
    with StopRequest() as stop:
        for step in range(steps):
            train_one_step()
            if stop.signum is not None:
                save_checkpoint(step)
                break
    ```
    """

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        if self.signum is None:
            self.signum = signum

    def install(self):
        self.signum = None
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc):
        self.restore()
        return False

"""Shared helpers of the learned-optimizer benchmarks."""

import json
import os
import platform
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "results")


def write_json(name, payload):
    """Writes `payload` (plus machine info) to benchmarks/results/<name>."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    payload = dict(payload)
    payload["machine"] = {"cpu_count": os.cpu_count(),
                          "platform": platform.platform(),
                          "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                    time.gmtime())}
    path = os.path.join(RESULTS_DIR, name)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"wrote {path}")
    return path


def read_json(name):
    """The payload `write_json(name, ...)` wrote (a name in results/, or a
    path)."""
    path = name if os.path.dirname(name) else os.path.join(RESULTS_DIR, name)
    with open(path) as f:
        return json.load(f)


def print_table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    print(fmt.format(*["-" * w for w in widths]))
    for r in rows:
        print(fmt.format(*r))


def current_rss_mb():
    """Resident memory of this process now, in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb():
    """Peak resident memory of this process so far, in MiB."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timings(run_steps, steps, reps):
    """Times `run_steps()` (which runs `steps` steps): the first call, then
    the median per-step time of `reps` more calls."""
    import numpy as np
    start = time.perf_counter()
    run_steps()
    first = time.perf_counter() - start
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run_steps()
        times.append((time.perf_counter() - start) / steps)
    step = float(np.median(times))
    return dict(first_call_s=first, compile_s=max(first - steps * step, 0.0),
                step_ms=1000 * step, step_ms_all=[1000 * t for t in times])


def fit_timings(model, data, steps, reps):
    """`timings` of a compiled Keras model's training: the first call is a
    `fit` of `steps` steps (it traces and compiles the train function),
    the others call that train function on an iterator of `data`, which
    runs `steps_per_execution` steps (= `steps`)."""
    state = {}

    def run_steps():
        if "iterator" not in state:
            model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
            state["iterator"] = iter(data)
            return
        logs = model.train_function(state["iterator"])
        # Reading a value waits for the step to finish.
        logs = logs.get_value() if hasattr(logs, "get_value") else logs
        float(logs["loss"])

    return timings(run_steps, steps, reps)


def run_child(module, cfg, timeout):
    """Runs `python -m <module> --_child=<cfg as JSON>` in a fresh process
    from the repository root; returns the dict it printed after "RESULT "
    or `{"error": ...}`."""
    import subprocess
    import sys
    cmd = [sys.executable, "-m", module, "--_child=" + json.dumps(cfg)]
    root = os.path.dirname(RESULTS_DIR)
    root = os.path.dirname(root)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout} s")
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if not lines and proc.returncode < 0:
        return dict(error=f"crashed with signal {-proc.returncode}")
    if not lines:
        return dict(error=(proc.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(lines[-1][7:])


def torch_available():
    """True if PyTorch imports (the `bench` extra); else prints why not."""
    try:
        import torch  # noqa: F401
    except ImportError:
        print("PyTorch is not installed: the peer side is skipped "
              "(pip install -e '.[bench]').")
        return False
    return True

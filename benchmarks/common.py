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


def print_table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    print(fmt.format(*["-" * w for w in widths]))
    for r in rows:
        print(fmt.format(*r))

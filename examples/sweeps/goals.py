"""Goals of a metric ("minimize" or "maximize") and comparisons under them;
non-finite values always rank last."""

import math

import numpy as np

GOALS = ("minimize", "maximize")


def is_finite(value):
    """True for a finite real number."""
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


def sort_key(value, goal):
    """Key that sorts values best first (non-finite last)."""
    if not is_finite(value):
        return math.inf
    return float(value) if goal == "minimize" else -float(value)

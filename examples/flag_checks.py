"""Checks of the applications' flags, made before anything trains.

Each raises a `ValueError` that names the flag (`--name`), the value given
and what is expected; nothing is silently replaced (a zero step count or
time limit is refused, not taken as "the default" or "no limit").
"""

import math
import numbers


def positive_int(name, value):
    """`--name` is an int >= 1."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or value < 1):
        raise ValueError(f"--{name} must be an int >= 1; got {value!r}.")


def non_negative_int(name, value):
    """`--name` is an int >= 0."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or value < 0):
        raise ValueError(f"--{name} must be an int >= 0; got {value!r}.")


def positive_ints(name, values):
    """`--name` is a non-empty list of ints >= 1."""
    if not values:
        raise ValueError(
            f"--{name} must list at least one int >= 1; got {values!r}.")
    for value in values:
        if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                or value < 1):
            raise ValueError(
                f"--{name} must list ints >= 1; got {list(values)!r}.")


def number(name, value, minimum=0.0, strict=False, allow_inf=False):
    """`--name` is a number >= `minimum` (> with `strict`), not NaN, and
    finite unless `allow_inf`."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and not math.isnan(value)
          and (allow_inf or math.isfinite(value))
          and (value > minimum if strict else value >= minimum))
    if not ok:
        bound = f"{'>' if strict else '>='} {minimum:g}"
        kind = "a number" if allow_inf else "a finite number"
        raise ValueError(f"--{name} must be {kind} {bound}; got {value!r}.")


def step_range(name, values):
    """`--name` is two ints `first, last` with 1 <= first <= last."""
    if (len(values) != 2 or any(isinstance(v, bool)
                                or not isinstance(v, numbers.Integral)
                                for v in values)
            or not 1 <= values[0] <= values[1]):
        raise ValueError(
            f"--{name} must be two ints first,last with 1 <= first <= "
            f"last; got {list(values)!r}.")


def not_below_done(name, value, done):
    """On resume: `--name` (a total step count) is not below the `done`
    steps the checkpoint already holds."""
    if value < done:
        raise ValueError(
            f"--{name}={value} is below the {done} steps this run has "
            f"already done (its newest checkpoint); pass --{name} >= "
            f"{done} to continue it, or start a new --model_dir.")

"""Argument checks shared by the package: one message per kind of mistake."""

import dataclasses
import math


def check_positive_int(name, value, allow_none=False):
    """Raises `ValueError` unless `value` is an int >= 1 (or None with
    `allow_none`); the message names the argument and the value given."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1; got {value!r}.")


def check_non_negative_int(name, value):
    """Raises `ValueError` unless `value` is an int >= 0; the message names
    the argument and the value given."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"`{name}` must be an int >= 0; got {value!r}.")


def check_non_negative_float(name, value):
    """Raises `ValueError` unless `value` is a finite real number >= 0 (not
    a bool); the message names the argument and the value given."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not (math.isfinite(value) and value >= 0)):
        raise ValueError(
            f"`{name}` must be a finite float >= 0; got {value!r}.")


def dataclass_from_dict(cls, fields):
    """`cls(**fields)` for a config dataclass, refusing unknown names with
    a message that lists them and the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(fields) - known
    if unknown:
        raise ValueError(
            f"Unknown {cls.__name__} fields {sorted(unknown)}; expected a "
            f"subset of {sorted(known)}.")
    return cls(**fields)

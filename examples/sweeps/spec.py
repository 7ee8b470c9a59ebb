"""Sweep specifications: parsing, grid and random expansion, trial ids.

A spec names flags of the target script and the values to try:

    inner_lr=0.1,0.4;meta_lr=1e-3,3e-4;inner_steps=1,5

Axes are separated by `;`, a name from its values by `=`, values by `,`.
Values are ints, floats, `true`/`false` or plain strings. For random
search an axis may instead be a distribution: `uniform(lo,hi)`,
`loguniform(lo,hi)` (lo > 0) or `randint(lo,hi)` (both ends included).
"""

import dataclasses
import hashlib
import itertools
import json
import math
import random
import re

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DISTRIBUTION = re.compile(
    r"^(uniform|loguniform|randint)\(\s*([^,()]+?)\s*,\s*([^,()]+?)\s*\)$")


@dataclasses.dataclass(frozen=True)
class Axis:
    """One swept flag: a list of `values`, or a `distribution` over [lo, hi].

    Attributes:
        name: the flag's name.
        values: tuple of values (grid or random choice), or None.
        distribution: "uniform", "loguniform" or "randint", or None.
        low: lower end of the distribution.
        high: upper end of the distribution.
    """

    name: str
    values: tuple = None
    distribution: str = None
    low: float = None
    high: float = None

    @property
    def discrete(self):
        return self.values is not None


def parse_value(text):
    """A spec value as int, float, bool or str.

    Example:
        >>> parse_value("3e-4"), parse_value("2"), parse_value("false")
        (0.0003, 2, False)
    """
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _parse_distribution(name, kind, low_text, high_text):
    try:
        low, high = float(low_text), float(high_text)
    except ValueError:
        raise ValueError(
            f"Sweep axis {name!r}: {kind}() needs two numbers; got "
            f"{low_text!r} and {high_text!r}.") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ValueError(f"Sweep axis {name!r}: {kind}({low_text}, "
                         f"{high_text}) needs finite lo < hi.")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"Sweep axis {name!r}: loguniform needs lo > 0; "
                         f"got {low_text}.")
    if kind == "randint":
        if low != int(low) or high != int(high):
            raise ValueError(f"Sweep axis {name!r}: randint needs integer "
                             f"ends; got {low_text} and {high_text}.")
        low, high = int(low), int(high)
    return Axis(name, distribution=kind, low=low, high=high)


def _parse_axis(part):
    if "=" not in part:
        raise ValueError(f"Sweep axis {part!r} has no '='; expected "
                         "name=v1,v2,... or name=loguniform(lo,hi).")
    name, _, text = part.partition("=")
    name, text = name.strip(), text.strip()
    if not _NAME.match(name):
        raise ValueError(f"Sweep axis {part!r}: {name!r} is not a flag name.")
    if not text:
        raise ValueError(f"Sweep axis {name!r} has no values.")
    match = _DISTRIBUTION.match(text)
    if match:
        return _parse_distribution(name, *match.groups())
    if "(" in text or ")" in text:
        raise ValueError(
            f"Sweep axis {name!r}: cannot parse {text!r}; distributions are "
            "uniform(lo,hi), loguniform(lo,hi) and randint(lo,hi).")
    items = [v.strip() for v in text.split(",")]
    if any(not v for v in items):
        raise ValueError(f"Sweep axis {name!r} has an empty value in "
                         f"{text!r}.")
    values = tuple(parse_value(v) for v in items)
    if len(set(values)) != len(values):
        raise ValueError(f"Sweep axis {name!r} repeats a value: {text!r}.")
    return Axis(name, values=values)


def parse_sweep(spec):
    """Parses a sweep spec into a list of `Axis`, in the order given.

    Raises:
        ValueError: an empty spec, an axis without `=` or values, a bad
            name, an empty or repeated value, a repeated axis, or a
            malformed distribution.

    Example:
        >>> [a.values for a in parse_sweep("inner_lr=0.1,0.4;inner_steps=1")]
        [(0.1, 0.4), (1,)]
    """
    parts = [p.strip() for p in (spec or "").split(";")]
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError("The sweep spec is empty; expected e.g. "
                         "'inner_lr=0.1,0.4;meta_lr=1e-3,3e-4'.")
    axes = [_parse_axis(p) for p in parts]
    names = [a.name for a in axes]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"The sweep spec names {repeated} more than once.")
    return axes


def grid(axes):
    """Every combination of the axes' values, as dicts (first axis slowest).

    Raises:
        ValueError: an axis is a distribution (use random search).

    Example:
        >>> grid(parse_sweep("a=1,2;b=x"))
        [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}]
    """
    continuous = [a.name for a in axes if not a.discrete]
    if continuous:
        raise ValueError(f"Grid search needs value lists; {continuous} are "
                         "distributions: use --search=random --trials=N.")
    return [dict(zip([a.name for a in axes], combo))
            for combo in itertools.product(*[a.values for a in axes])]


def _sample(axis, rng):
    if axis.discrete:
        return rng.choice(axis.values)
    if axis.distribution == "randint":
        return rng.randint(axis.low, axis.high)
    if axis.distribution == "loguniform":
        return float(math.exp(rng.uniform(math.log(axis.low),
                                          math.log(axis.high))))
    return float(rng.uniform(axis.low, axis.high))


def random_search(axes, trials, seed=0):
    """`trials` random points of the axes, reproducible from `seed`.

    When every axis is a value list, the points are drawn from the grid
    without replacement (at most the grid's size).

    Example:
        >>> len(random_search(parse_sweep("lr=loguniform(1e-4,1)"), 5))
        5
    """
    if trials < 1:
        raise ValueError(f"Random search needs --trials >= 1; got {trials}.")
    rng = random.Random(seed)
    if all(a.discrete for a in axes):
        points = grid(axes)
        return rng.sample(points, min(trials, len(points)))
    return [{a.name: _sample(a, rng) for a in axes} for _ in range(trials)]


def trial_id(hparams, seed, fixed=()):
    """A short id that depends only on the hparams, the seed and `fixed`.

    `fixed` holds everything else that makes the trial what it is (target,
    budget, pass-through flags), so a restarted sweep finds finished trials
    by id, and a changed setting does not reuse stale results.

    Example:
        >>> trial_id({"a": 1}, 0) == trial_id({"a": 1}, 0)
        True
    """
    key = json.dumps({"hparams": hparams, "seed": seed, "fixed": list(fixed)},
                     sort_keys=True, default=str)
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def format_value(value):
    """A value as a command-line string (`true`/`false` for bools)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)

"""absl flags generated from a dataclass config, so each setting is declared
once: its name, type and default in the dataclass, its help in the field's
metadata (`option(...)`) or in a table beside it.

    @dataclasses.dataclass
    class Config:
        steps: int = option(100, "Training steps.")
        mode: str = option("fast", "How.", choices=("fast", "exact"))
        shots: tuple[int, ...] | None = option(None, "Support sizes.")

    SPECS = specs(Config)
    define(SPECS)                   # --steps, --mode (an enum), --shots
    Config(**read(SPECS))           # after absl has parsed argv

Types map to flags as: bool, int, float and str to DEFINE_bool, _integer,
_float and _string (_enum with `choices`); a `tuple[X, ...]` to DEFINE_list
whose items are converted to X. `| None` only allows None as the default.
"""

import dataclasses
import types
import typing

from absl import flags

_SCALARS = (bool, int, float, str)


def option(default, help, choices=None, flag=True):  # noqa: A002
    """A dataclass field with its flag's help and, for strings, choices.

    Args:
        default: the default (also the flag's).
        help: the flag's help text.
        choices: allowed values of a str field (an enum flag).
        flag: False for a setting that has no flag.
    """
    return dataclasses.field(default=default, metadata=dict(
        help=help, choices=None if choices is None else tuple(choices),
        flag=flag))


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    """One flag: `kind` is bool, int, float, str, or list (items `item`)."""

    name: str
    kind: type
    default: object
    help: str
    choices: tuple = None
    item: type = None


def _kind(annotation):
    """`(kind, item)` of a field annotation."""
    if isinstance(annotation, types.UnionType) or \
            typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"Unsupported flag type {annotation}.")
        annotation = args[0]
    if typing.get_origin(annotation) is tuple:
        item = typing.get_args(annotation)[0]
        return list, item
    if annotation in _SCALARS:
        return annotation, None
    raise TypeError(f"Unsupported flag type {annotation}.")


def specs(cls, helps=None, choices=None):
    """The flags of dataclass `cls`.

    Args:
        cls: a dataclass whose fields carry `option` metadata, or any
            dataclass when `helps` is given.
        helps: `{field name: help}`; only these fields become flags
            (for a dataclass without `option` metadata).
        choices: `{field name: allowed values}` to go with `helps`.

    Returns:
        A list of `FlagSpec`, in field order.
    """
    hints = typing.get_type_hints(cls)
    out = []
    for field in dataclasses.fields(cls):
        if helps is not None:
            if field.name not in helps:
                continue
            help_text = helps[field.name]
            allowed = (choices or {}).get(field.name)
        else:
            if not field.metadata.get("flag", False):
                continue
            help_text = field.metadata["help"]
            allowed = field.metadata["choices"]
        kind, item = _kind(hints[field.name])
        out.append(FlagSpec(field.name, kind, field.default, help_text,
                            None if allowed is None else tuple(allowed),
                            item))
    return out


def define(flag_specs, flag_values=flags.FLAGS):
    """Defines the absl flags of `flag_specs`."""
    for s in flag_specs:
        if s.kind is list:
            default = None if s.default is None else [str(v)
                                                      for v in s.default]
            flags.DEFINE_list(s.name, default, s.help, flag_values=flag_values)
        elif s.choices is not None:
            flags.DEFINE_enum(s.name, s.default, list(s.choices), s.help,
                              flag_values=flag_values)
        else:
            define_fn = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
                         float: flags.DEFINE_float,
                         str: flags.DEFINE_string}[s.kind]
            define_fn(s.name, s.default, s.help, flag_values=flag_values)


def read(flag_specs, flag_values=flags.FLAGS):
    """`{name: value}` of the parsed flags; lists as tuples of their items."""
    out = {}
    for s in flag_specs:
        value = flag_values[s.name].value
        if s.kind is list and value is not None:
            value = tuple(s.item(v) for v in value)
        out[s.name] = value
    return out


def kinds(flag_specs):
    """`{name: (kind, choices)}`: what a sweep checks its values against."""
    return {s.name: (s.kind, s.choices) for s in flag_specs}


def defaults(config_class):
    """`{field name: default}` of a config dataclass (for comparing a
    resumed run's record, which may predate a field)."""
    return {f.name: f.default for f in dataclasses.fields(config_class)}

"""examples/config_flags: each application's flags are its config's fields,
generated once, and read back into the config."""

import dataclasses

import pytest
from absl import flags

from examples import config_flags
from examples.config_flags import option
from examples.maml import config as maml_config
from examples.sweeps import config as sweep_config


@dataclasses.dataclass
class Example:
    steps: int = option(100, "Training steps.")
    mode: str = option("fast", "How.", choices=("fast", "exact"))
    shots: tuple[int, ...] | None = option(None, "Support sizes.")
    names: tuple[str, ...] = option(("a", "b"), "Names.")
    rate: float | None = option(None, "A rate.")
    on: bool = option(False, "A switch.")
    hidden: dict | None = option(None, "Not a flag.", flag=False)


def parse(cls, argv):
    values = flags.FlagValues()
    specs = config_flags.specs(cls)
    config_flags.define(specs, values)
    values(["prog", *argv])
    return cls(**config_flags.read(specs, values))


def test_round_trip_of_every_kind():
    assert parse(Example, []) == Example()
    got = parse(Example, ["--steps=3", "--mode=exact", "--shots=1,5",
                          "--names=x", "--rate=0.5", "--on"])
    assert got == Example(3, "exact", (1, 5), ("x",), 0.5, True)
    with pytest.raises(flags.IllegalFlagValueError):
        parse(Example, ["--mode=slow"])
    assert config_flags.kinds(config_flags.specs(Example)) == {
        "steps": (int, None), "mode": (str, ("fast", "exact")),
        "shots": (list, None), "names": (list, None),
        "rate": (float, None), "on": (bool, None)}


@pytest.mark.parametrize("cls, not_flags", [
    (maml_config.Config, set()),
    (sweep_config.SweepConfig, {"passthrough", "python"}),
])
def test_every_field_is_a_flag_once(cls, not_flags):
    names = [s.name for s in config_flags.specs(cls)]
    assert len(names) == len(set(names))
    assert set(names) == {f.name for f in dataclasses.fields(cls)} - not_flags
    assert parse(cls, []) == cls()


def test_maml_flags_parse_into_the_config():
    config = parse(maml_config.Config, [
        "--task=omniglot", "--eval_shots=1,5", "--test_alphabets=Tifinagh",
        "--profile_batches=2,4", "--nojit_compile", "--inner_lr=0.2"])
    assert config.eval_shots == (1, 5)
    assert config.test_alphabets == ("Tifinagh",)
    assert config.profile_batches == (2, 4)
    assert config.jit_compile is False and config.inner_lr == 0.2
    resolved = maml_config.resolve(config)
    assert resolved.eval_steps == (3,) and resolved.steps_per_epoch == 100

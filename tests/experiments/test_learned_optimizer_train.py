"""examples/learned_optimizer: the flags come from the config, and a short
run writes loadable phi files, summaries and a profile."""

import numpy as np
import pytest
from absl import flags

import keras_meta
from keras_meta import backend
from keras_meta.meta import task_family
from keras_meta.rules import lstm as lstm_rule
from keras_meta.optimizers import weights_io

from examples import config_flags
from examples.learned_optimizer import config as lopt_config
from examples.learned_optimizer import train as lopt_train


def run(model_dir, **kwargs):
    return lopt_train.run(lopt_config.Config(
        problems=("quadratic",), unroll=5, horizon=10,
        model_dir=str(model_dir), verbose=0, **kwargs))


def test_flags_are_the_config_and_rule_fields():
    values = flags.FlagValues()
    config_flags.define(lopt_config.FLAG_SPECS, values)
    values(["prog", "--problems=quadratic", "--problem_weights=2",
            "--hidden_size=4", "--granularity=tensor", "--profile",
            "--profile_steps=2,3", "--nojit_compile"])
    config = lopt_config.from_flags(values)
    assert config.problems == ("quadratic",)
    assert config.problem_weights == (2.0,)
    assert config.profile_steps == (2, 3) and config.jit_compile is False
    rule = lstm_rule.RuleConfig.from_dict(config.rule)
    assert (rule.hidden_size, rule.granularity) == (4, "tensor")
    # Defaults of the rule's flags are RuleConfig's.
    assert rule.init_lr == lstm_rule.RuleConfig().init_lr
    assert config.meta_steps == lopt_config.Config().meta_steps


def test_writes_loadable_phi_summaries_and_profile(tmp_path):
    summary = run(tmp_path, meta_steps=4, meta_lr=1e-3,
                  rule={"hidden_size": 4, "num_layers": 1}, eval_every=2,
                  profile=True, profile_steps=(2, 3))
    opt = keras_meta.LearnedOptimizer(weights=summary["paths"]["best"])
    # profile_steps: a trace for the Profile tab; auto XLA is off on CPU.
    assert list(tmp_path.glob("profile/plugins/profile/*/*.xplane.pb"))
    assert summary["jit_compile"] is backend.default_jit_compile()
    assert opt.rule_config.hidden_size == 4
    assert np.isfinite(summary["final_eval_score"])
    assert any(f.name.startswith("events.out") for f in tmp_path.iterdir())


def test_per_tensor_rule_and_init_weights(tmp_path):
    rule = {"granularity": "tensor", "hidden_size": 4, "num_layers": 1,
            "init_lr": 3e-3}
    first = run(tmp_path / "a", meta_steps=2, rule=rule, eval_every=2)
    phi, cfg = weights_io.load_phi(first["paths"]["last"])
    assert cfg.granularity == "tensor" and np.isfinite(phi["hyper_rate"])
    # Warm start: init_* fields may differ (they only seed init_phi), the
    # file's config is kept; another architecture is refused.
    again = run(tmp_path / "b", meta_steps=1, rule=dict(rule, init_lr=1e-2),
                eval_every=1, init_weights=first["paths"]["last"])
    assert again["rule"]["init_lr"] == 3e-3
    with pytest.raises(ValueError, match="were trained for rule"):
        run(tmp_path / "c", meta_steps=1,
            rule=dict(rule, granularity="coordinate"),
            init_weights=first["paths"]["last"])


def test_task_kinds_flag_draws_those_kinds_and_refuses_others():
    values = flags.FlagValues()
    config_flags.define(lopt_config.FLAG_SPECS, values)
    values(["prog", "--tasks=small_omniglot", "--num_tasks=4",
            "--task_kinds=tokens,teacher"])
    config = lopt_config.from_flags(values)
    assert config.task_kinds == ("tokens", "teacher")
    kinds = [type(p) for p in lopt_train.build_tasks(config)]
    assert kinds == [task_family.TokenProblem, task_family.TeacherProblem] * 2
    # The default is the family the shipped `normalized` file was trained on.
    assert lopt_config.Config().task_kinds == ("mlp", "conv", "autoencoder")
    with pytest.raises(ValueError, match="kind must be one of"):
        lopt_train.build_tasks(lopt_config.Config(
            tasks="small_omniglot", num_tasks=2, task_kinds=("lstm",)))

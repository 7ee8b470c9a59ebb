"""Tests of the unrolled meta-trainer."""

import numpy as np
import pytest
import tensorflow as tf

from keras_meta.rules import baselines
from keras_meta.meta import problems
from keras_meta.meta import trainer
from keras_meta.rules import lstm as lstm_rule

from examples.learned_optimizer import train as lopt_train


def _tiny(dtype="float64", granularity="coordinate", descent="adam",
          hyper_horizon=1.0):
    cfg = lstm_rule.RuleConfig(hidden_size=4, num_layers=2,
                               granularity=granularity, descent=descent,
                               hyper_horizon=hyper_horizon)
    prob = problems.QuadraticProblem(batch_size=2, num_dims=3, dtype=dtype)
    phi = {k: tf.constant(v) for k, v in
           lstm_rule.init_phi(cfg, seed=3, dtype=dtype).items()}
    # Non-trivial output layer so every phi entry matters.
    phi["out/kernel"] = phi["out/kernel"] * 30.0
    phi["log_lr"] = tf.constant(np.log(0.05), dtype)
    return cfg, prob, phi


@pytest.mark.parametrize("meta_loss,granularity,descent,hyper_horizon", [
    ("mean", "coordinate", "adam", 1.0), ("log", "coordinate", "adam", 1.0),
    ("log", "tensor", "adam", 1.0), ("log", "tensor", "adam", 2.0),
    ("log", "coordinate", "momentum", 1.0)])
def test_meta_gradient_matches_finite_differences(meta_loss, granularity,
                                                  descent, hyper_horizon):
    cfg, prob, phi = _tiny(granularity=granularity, descent=descent,
                           hyper_horizon=hyper_horizon)
    inst = prob.sample(0)
    batches = prob.batches(inst, 4, 0)
    state0 = [lstm_rule.init_state(p, cfg) for p in inst.params]

    def objective(phi_values):
        out = trainer.unrolled_meta_loss(
            phi_values, prob, list(inst.params), state0, inst.task, batches,
            unroll=3, config=cfg, second_order=True, meta_loss=meta_loss)
        return out["objective"]

    with tf.GradientTape() as tape:
        tape.watch(phi)
        obj = objective(phi)
    grads = tape.gradient(obj, phi)
    rng = np.random.default_rng(0)
    checked = 0
    keys = ["log_lr", "out/kernel", "out/bias", "lstm0/kernel", "lstm1/bias"]
    if granularity == "tensor":
        keys.append("hyper_rate")
    for key in keys:
        base = np.array(phi[key].numpy())
        flat = rng.integers(base.size) if base.size > 1 else 0
        idx = np.unravel_index(flat, base.shape) if base.shape else ()
        eps = 1e-6
        plus, minus = np.array(base), np.array(base)
        plus[idx] += eps
        minus[idx] -= eps
        fd = (float(objective({**phi, key: tf.constant(plus)})) -
              float(objective({**phi, key: tf.constant(minus)}))) / (2 * eps)
        analytic = grads[key].numpy()[idx]
        np.testing.assert_allclose(analytic, fd, rtol=1e-5, atol=1e-9)
        checked += abs(fd) > 1e-6
    assert checked >= 4  # the derivatives checked are not all zero


def test_first_order_drops_second_derivatives():
    cfg, prob, phi = _tiny()
    inst = prob.sample(1)
    batches = prob.batches(inst, 4, 0)
    state0 = [lstm_rule.init_state(p, cfg) for p in inst.params]
    grads = {}
    for second in (True, False):
        with tf.GradientTape() as tape:
            tape.watch(phi)
            out = trainer.unrolled_meta_loss(
                phi, prob, list(inst.params), state0, inst.task, batches,
                unroll=3, config=cfg, second_order=second, meta_loss="mean")
        grads[second] = tape.gradient(out["objective"], phi)["log_lr"].numpy()
    assert np.isfinite(grads[False]) and grads[False] != 0
    assert not np.isclose(grads[True], grads[False], rtol=1e-6)


def test_truncations_carry_state_and_restart_at_horizon():
    cfg = lstm_rule.RuleConfig(hidden_size=4, num_layers=1)
    prob = problems.QuadraticProblem(batch_size=4, num_dims=3)
    mt = trainer.MetaTrainer([prob], config=cfg, unroll=5, horizon=10,
                             meta_lr=1e-3)
    logs = [mt.meta_step() for _ in range(3)]
    assert [l["run_step"] for l in logs] == [5, 10, 5]
    # The second truncation starts where the first stopped: lower loss.
    assert logs[1]["mean_loss"] < logs[0]["mean_loss"]
    assert all(l["applied"] for l in logs)
    with pytest.raises(ValueError, match="multiple of unroll"):
        trainer.MetaTrainer([prob], config=cfg, unroll=3, horizon=10)


def test_short_meta_training_lowers_meta_loss():
    cfg = lstm_rule.RuleConfig(hidden_size=8, num_layers=2)
    prob = problems.QuadraticProblem(batch_size=16, num_dims=4)
    mt = trainer.MetaTrainer([prob], config=cfg, unroll=5, horizon=20,
                             meta_lr=1e-2, seed=0)
    before, _ = lopt_train.evaluate(baselines.Learned(mt.phi_numpy(), cfg),
                                    [prob], steps=20)
    history = mt.train(80)
    after, _ = lopt_train.evaluate(baselines.Learned(mt.phi_numpy(), cfg),
                                   [prob], steps=20)
    assert all(h["applied"] for h in history)
    # Scores are mean log losses; ask for a clear improvement.
    assert after < before - 0.2, (before, after)


def test_second_order_meta_training_of_the_momentum_rule_lowers_final_loss():
    # The quadratic specialist's recipe in small: the secant heavy ball,
    # meta-trained with second-order meta-gradients.
    cfg = lstm_rule.RuleConfig(hidden_size=4, num_layers=1,
                               descent="momentum", beta_1=0.9, init_lr=0.5)
    prob = problems.QuadraticProblem(batch_size=16, num_dims=4)
    mt = trainer.MetaTrainer([prob], config=cfg, unroll=10, horizon=20,
                             meta_lr=3e-2, second_order=True, seed=0)

    def final_loss():
        rule = baselines.Learned(mt.phi_numpy(), cfg)
        return np.mean([trainer.run_rule(rule, prob, prob.sample(10**6 + i),
                                         20)[-1] for i in range(3)])

    before = final_loss()
    history = mt.train(60)
    after = final_loss()
    assert all(h["applied"] for h in history)
    assert after < 0.7 * before, (before, after)


def test_xla_and_graph_truncations_agree():
    cfg = lstm_rule.RuleConfig(hidden_size=4, num_layers=2)
    prob = problems.QuadraticProblem(batch_size=4, num_dims=3)
    outs = []
    for jit in (False, True):
        mt = trainer.MetaTrainer([prob], config=cfg, unroll=3, horizon=6,
                                 jit_compile=jit, seed=2)
        outs.append([mt.meta_step()["objective"] for _ in range(2)]
                    + [v for v in mt.phi_numpy().values()])
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_nonfinite_meta_gradient_is_skipped():
    cfg = lstm_rule.RuleConfig(hidden_size=4, num_layers=1)
    prob = problems.QuadraticProblem(batch_size=4, num_dims=3)
    phi = lstm_rule.init_phi(cfg)
    phi["log_lr"] = np.array(80.0, "float32")  # exp(80) overflows float32
    mt = trainer.MetaTrainer([prob], config=cfg, phi=phi, unroll=2, horizon=4)
    before = mt.phi_numpy()
    logs = mt.meta_step()
    assert not logs["applied"]
    assert mt.skipped_meta_steps == 1
    for k, v in mt.phi_numpy().items():
        np.testing.assert_array_equal(v, before[k])

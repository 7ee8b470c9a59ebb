"""Tests of persistent evolution strategies (keras_meta.meta.pes) and of
MetaTrainer with estimator="pes"."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import keras_meta
from keras_meta.meta import pes
from keras_meta.meta import problems
from keras_meta.meta import trainer
from keras_meta.meta.truncated_step import truncated_step
from keras_meta.rules import lstm as lstm_rule
from keras_meta.rules import normalized
from keras_meta.rules.base import UpdateRule
from keras_meta.optimizers import weights_io

from examples.learned_optimizer import config as lopt_config
from examples.learned_optimizer import train as lopt_train


class HeavyBall(UpdateRule):
    """A two-parameter rule (learned log rate and momentum logit); any
    rule with dict meta-parameters goes through the same code."""

    def init(self, values):
        return [tf.zeros_like(v) for v in values]

    def init_meta_params(self, seed):
        del seed
        return {"beta": np.array(0.0), "log_lr": np.array(np.log(0.02))}

    def update(self, meta_params, grads, state, values, step):
        lr = tf.exp(meta_params["log_lr"])
        beta = tf.sigmoid(meta_params["beta"])
        state = [beta * m + g for m, g in zip(state, grads)]
        return [-lr * m for m in state], state


KEYS = ["beta", "log_lr"]
UNROLL = 4


def _quadratic():
    prob = problems.QuadraticProblem(batch_size=3, num_dims=3,
                                     dtype="float64")
    return prob, prob.sample(0)


def _meta_values(beta=0.5, log_lr=np.log(0.02)):
    return [tf.constant(beta, tf.float64), tf.constant(log_lr, tf.float64)]


def _exact_gradient(meta_values, prob, inst, truncations):
    """Backpropagation through the whole run of the last truncation's
    meta-loss (second order: the exact derivative)."""
    rule = HeavyBall()
    batches = prob.batches(inst, UNROLL + 1, 0)
    with tf.GradientTape() as tape:
        tape.watch(meta_values)
        meta = dict(zip(KEYS, meta_values))
        params, state = list(inst.params), rule.init(list(inst.params))
        for _ in range(truncations):
            out = truncated_step(rule, meta, prob, params, state, inst.task,
                                 batches, UNROLL, second_order=True)
            params, state = out["params"], out["state"]
    return [g.numpy() for g in tape.gradient(out["objective"], meta_values)]


def _pes_gradient(meta_values, prob, inst, truncations, num_particles,
                  persistent=True, sigma=1e-3):
    estimator = pes.PersistentES(HeavyBall(), KEYS, UNROLL, sigma=sigma)
    rng = np.random.default_rng(0)
    run = {"problem": prob, "instance": inst, "seed": 0, "step": 0,
           "params": list(inst.params),
           "state": HeavyBall().init(list(inst.params))}
    particles = [pes.Particle(run, 100, meta_values)
                 for _ in range(num_particles)]
    for _ in range(truncations):
        if not persistent:
            for p in particles:
                p.accum = [tf.zeros_like(a) for a in p.accum]
        grads, outs = estimator.estimate(meta_values, particles, rng)
        # The quadratic is deterministic: every truncation of a particle
        # sees the same (empty) batches, seed-independent.
    assert all(o["finite"] for o in outs)
    return [g.numpy() for g in grads]


def _cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def gradients():
    """The exact gradient of the third truncation's meta-loss, and the
    PES estimate of it with 64 pairs."""
    prob, inst = _quadratic()
    meta_values = _meta_values()
    return (_exact_gradient(meta_values, prob, inst, 3),
            _pes_gradient(meta_values, prob, inst, 3, num_particles=64))


def test_pes_matches_the_exact_gradient_over_several_truncations(gradients):
    exact, estimate = gradients
    assert _cosine(estimate, exact) > 0.95, (estimate, exact)
    np.testing.assert_allclose(np.linalg.norm(estimate),
                               np.linalg.norm(exact), rtol=0.3)


def test_truncated_es_without_persistence_is_biased(gradients):
    # The same particles without the accumulated perturbation estimate
    # only the last truncation's partial derivative: visibly off the
    # total derivative that PES recovers.
    exact, persistent = gradients
    prob, inst = _quadratic()
    truncated = _pes_gradient(_meta_values(), prob, inst, 3, 64,
                              persistent=False)
    error = lambda g: np.linalg.norm(np.subtract(g, exact))  # noqa: E731
    assert error(truncated) > 3 * error(persistent), (truncated, persistent,
                                                      exact)


def test_forward_truncation_is_the_truncated_step():
    prob = _small_problems()[1]
    inst = prob.sample(0)
    cfg = lstm_rule.RuleConfig(hidden_size=4, num_layers=1,
                               granularity="tensor")
    rule = lstm_rule.LSTMRule(cfg)
    phi = {k: tf.constant(v) for k, v in lstm_rule.init_phi(cfg, 1).items()}
    params = list(inst.params)
    batches = prob.batches(inst, 6, 0)
    task = prob.task_tensors(inst)
    ref = truncated_step(rule, phi, prob, params, rule.init(params), task,
                         batches, 5)
    out = tf.function(pes.forward_truncation, autograph=False)(
        rule, phi, prob, params, rule.init(params), task, batches, 5)
    np.testing.assert_allclose(out[0], ref["objective"], rtol=1e-6)
    np.testing.assert_allclose(out[1], ref["losses"], rtol=1e-6)
    for a, b in zip(out[2], ref["params"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(tf.nest.flatten(out[3]), tf.nest.flatten(ref["state"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


class AddStep(UpdateRule):
    def update(self, meta_params, grads, state, values, step):
        return [tf.fill(tf.shape(v), tf.cast(step, v.dtype))
                for v in values], state


def test_forward_truncation_passes_the_runs_step_count():
    prob, inst = _quadratic()
    out = pes.forward_truncation(
        AddStep(), {}, prob, [tf.zeros_like(inst.params[0])], (), inst.task,
        prob.batches(inst, 3, 0), 2, first_step=tf.constant(5))
    np.testing.assert_array_equal(out[2][0], 11.0)  # 5 + 6


def test_antithetic_pairs_are_symmetric():
    prob, inst = _quadratic()
    estimator = pes.PersistentES(HeavyBall(), KEYS, UNROLL, sigma=0.1)
    meta_values = _meta_values()
    eps = estimator.perturbation(meta_values, np.random.default_rng(1))
    run = (list(inst.params), HeavyBall().init(list(inst.params)))
    batches = prob.batches(inst, UNROLL + 1, 0)
    fn = estimator.pair_fn(prob)
    zero_step = tf.constant(0)
    obj, losses, pos, neg = fn(meta_values, eps, run, run, inst.task,
                               batches, zero_step)
    flipped = fn(meta_values, [-e for e in eps], run, run, inst.task,
                 batches, zero_step)
    np.testing.assert_array_equal(flipped[0].numpy(), obj.numpy()[::-1])
    np.testing.assert_array_equal(flipped[1].numpy(), losses.numpy()[::-1])
    assert obj[0] != obj[1]
    # Zero perturbation: both runs are the unperturbed rule.
    zero = fn(meta_values, [tf.zeros_like(e) for e in eps], run, run,
              inst.task, batches, zero_step)
    assert zero[0][0] == zero[0][1]
    np.testing.assert_array_equal(zero[2][0][0], zero[3][0][0])


def test_vectorized_pairs_match_looped_pairs():
    prob, inst = _quadratic()
    meta_values = _meta_values()
    outs = []
    for vectorize in (False, True):
        estimator = pes.PersistentES(HeavyBall(), KEYS, UNROLL, sigma=0.1,
                                     vectorize=vectorize)
        eps = estimator.perturbation(meta_values, np.random.default_rng(1))
        run = (list(inst.params), HeavyBall().init(list(inst.params)))
        outs.append(estimator.pair_fn(prob)(
            meta_values, eps, run, run, inst.task,
            prob.batches(inst, UNROLL + 1, 0), tf.constant(0)))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-12)
    np.testing.assert_allclose(outs[0][2][0][0], outs[1][2][0][0],
                               rtol=1e-12)


def test_accumulated_perturbation_persists_and_resets_on_a_new_run():
    prob, _ = _quadratic()
    mt = trainer.MetaTrainer([prob], rule=HeavyBall(), unroll=UNROLL,
                             horizon=2 * UNROLL, estimator="pes",
                             num_particles=2, dtype="float64", seed=3)
    mt._particles.stagger = False
    drawn = []
    original = mt.estimator.perturbation

    def record(meta_values, rng):
        drawn.append(original(meta_values, rng))
        return drawn[-1]

    mt.estimator.perturbation = record
    accums = []
    for _ in range(3):
        mt.meta_step()
        accums.append([p.accum for p in mt._particles.particles])
    for i in range(2):  # particle i's draws: drawn[i], drawn[2 + i], ...
        np.testing.assert_array_equal(accums[0][i], drawn[i])
        np.testing.assert_allclose(
            accums[1][i], [a + b for a, b in zip(drawn[i], drawn[2 + i])])
        # Horizon reached after two truncations: a new run, xi restarts.
        np.testing.assert_array_equal(accums[2][i], drawn[4 + i])
        assert mt._particles.particles[i].step == UNROLL


def _small_problems():
    mlp = problems.KerasProblem(
        lambda: problems.mlp_model(input_shape=(3, 3, 1), hidden=(4,),
                                   num_classes=3),
        problems.TeacherData(input_shape=(3, 3, 1), num_classes=3, hidden=4),
        batch_size=8, name="mlp")
    return [problems.QuadraticProblem(batch_size=4, num_dims=3), mlp]


def _pes_trainer(probs, **kwargs):
    return trainer.MetaTrainer(probs, rule=HeavyBall(), unroll=3, horizon=9,
                               meta_lr=1e-2, seed=5, estimator="pes",
                               num_particles=3, horizon_range=(3, 12),
                               **kwargs)


def test_checkpoint_resume_is_bitwise():
    probs = _small_problems()
    full = _pes_trainer(probs)
    for _ in range(4):
        full.meta_step()
    arrays, info = full.get_state()
    info = json.loads(json.dumps(info))  # what a checkpoint keeps
    assert any(k.startswith("pes/2/accum/") for k in arrays)
    full_logs = [full.meta_step()["objective"] for _ in range(3)]
    resumed = _pes_trainer(probs, phi={"beta": np.array(1.0),
                                       "log_lr": np.array(-1.0)})
    resumed.set_state(arrays, info)
    logs = [resumed.meta_step()["objective"] for _ in range(3)]
    assert logs == full_logs
    a, b = full.get_state(), resumed.get_state()
    assert a[1] == b[1]
    assert sorted(a[0]) == sorted(b[0])
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k], err_msg=k)


def test_example_resume_from_a_checkpoint_is_bitwise(tmp_path):
    # The LSTM rule (its state a list of dicts) through the example's
    # checkpoint files.
    def run(name, meta_steps, **kwargs):
        return lopt_train.run(lopt_config.Config(
            problems=("quadratic",), unroll=5, horizon=10,
            meta_steps=meta_steps, meta_lr=1e-2, model_dir=str(tmp_path / name),
            rule={"hidden_size": 4, "num_layers": 1}, eval_every=1000,
            checkpoint_every=3, verbose=0, estimator="pes", num_particles=2,
            horizon_range=(5, 15), eval_steps=5, **kwargs))

    whole = run("whole", 7)
    run("split", 4)  # checkpoint at 3, mid-run for the particles
    resumed = run("split", 7, resume=True)
    assert whole["estimator"] == resumed["estimator"] == "pes"
    a, b = [weights_io.load_phi(os.path.join(tmp_path, d, "phi_last.npz"))[0]
            for d in ("whole", "split")]
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_example_meta_trains_the_normalized_rule_with_pes(tmp_path):
    summary = lopt_train.run(lopt_config.Config(
        problems=("quadratic",), unroll=5, horizon=10, meta_steps=3,
        model_dir=str(tmp_path), eval_every=1000, verbose=0,
        rule_kind="normalized", normalize="none", antisymmetric=True,
        momentum_decays=(0.9, 0.99), estimator="pes",
        num_particles=2, eval_steps=5))
    phi, cfg = weights_io.load_phi(summary["paths"]["last"])
    assert isinstance(cfg, normalized.NormalizedConfig)
    assert cfg.normalize == "none" and cfg.antisymmetric
    assert cfg.momentum_decays == (0.9, 0.99)
    assert summary["rule_kind"] == "normalized"
    assert np.isfinite(summary["final_eval_score"])
    init = normalized.init_meta_params(cfg)
    assert any(not np.array_equal(phi[k], init[k]) for k in phi)
    keras_meta.LearnedOptimizer(weights=summary["paths"]["last"])


def test_pes_meta_training_lowers_the_meta_loss():
    prob = problems.QuadraticProblem(batch_size=8, num_dims=4)
    mt = trainer.MetaTrainer([prob], rule=HeavyBall(), unroll=5, horizon=20,
                             meta_lr=0.05, estimator="pes", num_particles=8,
                             sigma=0.05, seed=0)
    before = trainer.run_rule(HeavyBall(), prob, prob.sample(10**6), 20,
                              meta_params=mt.phi_numpy())[-1]
    history = mt.train(40)
    after = trainer.run_rule(HeavyBall(), prob, prob.sample(10**6), 20,
                             meta_params=mt.phi_numpy())[-1]
    assert all(h["applied"] for h in history)
    assert after < 0.5 * before, (before, after)


def test_bad_arguments_are_refused():
    prob, _ = _quadratic()
    with pytest.raises(ValueError, match="estimator must be one of"):
        trainer.MetaTrainer([prob], rule=HeavyBall(), estimator="es")
    with pytest.raises(ValueError, match="multiples of unroll"):
        trainer.MetaTrainer([prob], rule=HeavyBall(), unroll=5, horizon=20,
                            estimator="pes", horizon_range=(5, 12))
    with pytest.raises(ValueError, match="init_meta_params"):
        trainer.MetaTrainer([prob], rule=UpdateRule())
    with pytest.raises(ValueError, match="sigma"):
        pes.PersistentES(HeavyBall(), KEYS, 5, sigma=0.0)
    with pytest.raises(ValueError, match="meta_objective must be"):
        pes.PersistentES(HeavyBall(), KEYS, 5, meta_objective="test")
    with pytest.raises(ValueError, match="has none"):
        pes.PersistentES(HeavyBall(), KEYS, 5,
                         meta_objective="validation").pair_fn(prob)

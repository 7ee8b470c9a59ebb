"""Unrolled meta-training of an update rule: the outer learner.

`MetaTrainer` optimizes phi, the meta-parameters of an update rule (by
default the LSTM rule, `keras_meta.rules.lstm`; any
`keras_meta.rules.UpdateRule` whose meta-parameters are a dict of
tensors), by gradient descent on the optimizee losses along unrolled
optimization runs. Two gradient estimators:

  * `estimator="tbptt"` (default), truncated backpropagation through time,
    below;
  * `estimator="pes"`, persistent evolution strategies (`pes`): antithetic
    pairs of forward-only runs of many problem instances (particles) at
    once, each pair carrying its accumulated perturbation across its
    run's truncations, so the estimate is free of truncation bias over
    long horizons.

Truncated backpropagation:

  * a run samples a problem (from a mixture of `problems.Problem` families)
    and optimizes it for `horizon` steps with the rule;
  * the run is cut into truncations of `unroll` steps
    (`truncated_step.truncated_step`: the optimizee is a pure function of
    its parameter list, `model.stateless_call` for Keras models, nothing
    is assigned); each truncation's meta-gradient comes from
    `tbptt.TruncatedBackprop`, one compiled `tf.function` per problem, and
    its final parameters and rule state are carried (without gradient)
    into the next truncation;
  * `second_order=False` (default, as the paper) stops gradients through the
    optimizee gradients; meta-gradients are clipped by global norm and
    applied with Adam; a truncation whose losses or meta-gradient are not
    finite is skipped and counted (`keras_meta.nonfinite`).

`run_rule`, `adam_reference_lr` and `log10_mean` (evaluation of any
`keras_meta.rules.UpdateRule`) live in `rollout` and are importable from
here too.
"""

import math
import time

import keras
import numpy as np
import tensorflow as tf

from keras_meta import backend as km_backend
from keras_meta import errors
from keras_meta import nonfinite
from keras_meta.meta.rollout import adam_reference_lr  # noqa: F401
from keras_meta.meta.rollout import log10_mean  # noqa: F401
from keras_meta.meta.rollout import run_rule  # noqa: F401
from keras_meta.meta import pes
from keras_meta.meta.tbptt import TruncatedBackprop
from keras_meta.meta.truncated_step import unrolled_meta_loss  # noqa: F401
from keras_meta.optimizers import rule_kinds
from keras_meta.rules import lstm

# What stops a truncation, by `nonfinite.first_nonfinite` index.
_NONFINITE_QUANTITIES = {1: "optimizee loss", 2: "meta-gradient"}
ESTIMATORS = ("tbptt", "pes")


def _initial_phi(rule, seed):
    """The default initial meta-parameters of `rule` (dict of arrays):
    `rule.init_meta_params(seed)`, else those of its config's kind
    (`keras_meta.optimizers.rule_kinds`: the LSTM and normalized rules)."""
    if hasattr(rule, "init_meta_params"):
        return rule.init_meta_params(seed)
    try:
        return rule_kinds.init_meta_params(getattr(rule, "config", None),
                                           seed)
    except TypeError:
        raise ValueError(
            f"{type(rule).__name__} has no init_meta_params(seed) and no "
            "known config; pass phi, the initial meta-parameters (a dict "
            "of arrays).") from None


class MetaTrainer:
    """Meta-trains phi of an update rule on a mixture of problem families.

    Args:
        problems: list of `problems.Problem` (the meta-training mixture).
        config: `keras_meta.rules.lstm.RuleConfig` of the default rule.
        phi: initial phi (dict of arrays); default `lstm.init_phi` for the
            LSTM rule, else `rule.init_meta_params(seed)` where the rule
            has it (required otherwise).
        unroll: steps per truncation (paper: 20).
        horizon: steps per optimization run (paper: 100).
        meta_lr: Adam learning rate for phi.
        clip_norm: global-norm clip of the meta-gradient.
        second_order: keep second derivatives (default False, as the paper).
        meta_loss: `"log"` or `"mean"` (see `truncated_step`).
        jit_compile: compile each truncation with XLA; "auto" (default):
            `keras_meta.backend.default_jit_compile()`, XLA on GPU and TPU.
        seed: seeds problem sampling.
        dtype: float dtype of phi and the unroll.
        problem_weights: sampling probabilities of `problems` for each new
            run (default uniform).
        max_consecutive_skips: int >= 1 or None: after this many
            non-finite truncations in a row, `meta_step` raises
            `keras_meta.errors.NonFiniteError` (None: never).
        strategy: a `tf.distribute.Strategy` to split problems across
            replicas (None: one device). Each meta-step then runs one
            truncation per replica, every replica on its own instance of
            the same family (its own seed), with `strategy.run`; the
            meta-gradient is the cross-replica mean (the single-device
            meta-gradient of the mean objective over those instances),
            applied to phi once. `get_state` then omits the runs in
            progress: a resumed job starts fresh runs. TBPTT only.
        rule: the `keras_meta.rules.UpdateRule` to meta-train (its
            meta-parameters a dict of tensors); default
            `lstm.LSTMRule(config)`.
        estimator: `"tbptt"` (truncated backpropagation) or `"pes"`
            (`pes.PersistentES`; `second_order` is then unused).
        num_particles: PES: antithetic pairs (problem instances) per
            meta-step.
        sigma: PES: standard deviation of the perturbations of phi.
        horizon_range: PES: optional `(low, high)` steps; each new run
            draws its horizon among the multiples of `unroll` there.
        vectorize: PES: batch each pair's two runs (`tf.vectorized_map`).
        meta_objective: PES: `"train"` or `"validation"` (held-out
            examples; see `pes.PersistentES`).
    """

    def __init__(self, problems, config=lstm.RuleConfig(), phi=None,
                 unroll=20, horizon=100, meta_lr=1e-3, clip_norm=1.0,
                 second_order=False, meta_loss="log", jit_compile="auto",
                 seed=0, dtype="float32", problem_weights=None,
                 max_consecutive_skips=20, strategy=None, rule=None,
                 estimator="tbptt", num_particles=8, sigma=0.01,
                 horizon_range=None, vectorize=False, meta_objective="train"):
        if isinstance(meta_lr, (int, float)) and not (
                math.isfinite(meta_lr) and meta_lr >= 0):
            raise ValueError(
                f"meta_lr must be a finite number >= 0; got {meta_lr}.")
        if horizon % unroll:
            raise ValueError(
                f"horizon ({horizon}) must be a multiple of unroll ({unroll})."
            )
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got "
                             f"{estimator!r}.")
        if estimator == "pes" and strategy is not None:
            raise ValueError("estimator='pes' runs on one device; "
                             "strategy must be None.")
        self.problems = list(problems)
        self.problem_probs = self._problem_probs(problem_weights)
        self.rule = rule if rule is not None else lstm.LSTMRule(config)
        self.config = getattr(self.rule, "config", config)
        self.unroll, self.horizon = unroll, horizon
        self.clip_norm = clip_norm
        self.second_order = second_order
        self.meta_loss = meta_loss
        if jit_compile == "auto":
            jit_compile = km_backend.default_jit_compile(strategy=strategy)
        self.jit_compile = bool(jit_compile)
        self.dtype = dtype
        phi = phi if phi is not None else _initial_phi(self.rule, seed)
        self.phi = {
            k: keras.Variable(np.asarray(v, dtype), dtype=dtype,
                              name="phi_" + k.replace("/", "_"))
            for k, v in sorted(phi.items())
        }
        self.meta_optimizer = keras.optimizers.Adam(meta_lr)
        self.meta_optimizer.build(list(self.phi.values()))
        self.estimator_kind = estimator
        self._particles = None
        if estimator == "pes":
            self.estimator = pes.PersistentES(
                self.rule, sorted(self.phi), unroll, sigma, meta_loss,
                self.jit_compile, vectorize, meta_objective)
            self._particles = pes.ParticleRuns(
                self.estimator, num_particles, horizon, horizon_range)
        else:
            self.estimator = TruncatedBackprop(
                self.rule, sorted(self.phi), unroll, second_order, meta_loss,
                self.jit_compile)
        self.rng = np.random.default_rng(seed)
        self.skipped_meta_steps = 0
        self.consecutive_skips = 0
        self.max_consecutive_skips = max_consecutive_skips
        self.meta_steps_done = 0
        self._run = None
        self.strategy = strategy

    def _problem_probs(self, problem_weights):
        if problem_weights is None:
            problem_weights = [1.0] * len(self.problems)
        if len(problem_weights) != len(self.problems):
            raise ValueError(
                f"Got {len(problem_weights)} problem_weights for "
                f"{len(self.problems)} problems."
            )
        w = np.asarray(problem_weights, dtype=np.float64)
        return w / w.sum()

    def phi_numpy(self):
        """Current phi as a dict of numpy arrays."""
        return {k: v.numpy() for k, v in self.phi.items()}

    def _phi_values(self):
        return [self.phi[k].value for k in sorted(self.phi)]

    def _truncation_fn(self, problem):
        """The compiled truncation of `problem` (`TruncatedBackprop`)."""
        return self.estimator.truncation_fn(problem)

    def _start(self, instance):
        """The parameters and initial rule state of a new run."""
        params = [tf.cast(p, self.dtype) for p in instance.params]
        return params, self.rule.init(params)

    def _new_run(self):
        problem = self.problems[
            self.rng.choice(len(self.problems), p=self.problem_probs)]
        seed = int(self.rng.integers(2**31))
        if self.strategy is not None:
            # One instance per replica (same family); every worker draws
            # the same seeds and builds only its own replicas' instances.
            seeds = [seed] + [int(self.rng.integers(2**31)) for _ in range(
                self.strategy.num_replicas_in_sync - 1)]
            return {"problem": problem, "seeds": seeds, "instances": {},
                    "params": None, "state": None, "step": 0, "seed": seed}
        return self._fresh_run(problem, seed)

    def _fresh_run(self, problem, seed):
        """The run dict of a new run of `problem`'s instance `seed`."""
        if isinstance(problem, int):
            problem = self.problems[problem]
        instance = problem.sample(seed)
        params, state = self._start(instance)
        return {"problem": problem, "instance": instance, "params": params,
                "state": state, "step": 0, "seed": seed}

    def _truncation(self, run):
        """The current truncation's `TruncatedBackprop` output."""
        if self.strategy is not None:
            return self._distributed_truncation(run)
        problem = run["problem"]
        batches = problem.batches(
            run["instance"], self.unroll + 1,
            pes.batch_seed(run["seed"], run["step"]))
        return self._truncation_fn(problem)(
            self._phi_values(), run["params"], run["state"],
            problem.task_tensors(run["instance"]), batches)

    def _apply_or_skip(self, run, out, norm):
        """Applies the meta-gradient if finite, else skips and counts.

        Returns the `nonfinite.first_nonfinite` index (0: applied).
        """
        bad = int(nonfinite.first_nonfinite([out["losses"], norm]))
        if not bad:
            clipped, _ = tf.clip_by_global_norm(out["meta_grads"],
                                                self.clip_norm)
            self.meta_optimizer.apply(clipped, [self.phi[k] for k in
                                                sorted(self.phi)])
            run["params"], run["state"] = out["params"], out["state"]
            run["step"] += self.unroll
        else:
            self.skipped_meta_steps += 1
            self._run = None  # start a fresh run
        self.consecutive_skips = int(nonfinite.consecutive_count(
            self.consecutive_skips, bool(bad)))
        return bad

    def _check_skips(self, bad, problem):
        if (self.max_consecutive_skips is None
                or self.consecutive_skips < self.max_consecutive_skips):
            return
        quantity = _NONFINITE_QUANTITIES.get(bad, "meta-gradient")
        phi_finite = bool(nonfinite.all_finite(self._phi_values()))
        raise errors.NonFiniteError(
            f"Meta-training stopped at meta-step {self.meta_steps_done}: "
            f"the {quantity} was not finite in {self.consecutive_skips} "
            f"consecutive truncations (on {problem.name!r}), which were "
            f"skipped ({self.skipped_meta_steps} in all; "
            f"{errors.weights_state(phi_finite, 'phi')}). Lower --meta_lr "
            "or --clip_norm, or "
            "check the problem.", step=self.meta_steps_done,
            quantity=quantity)

    def meta_step(self):
        """Runs one truncation and applies one meta-update.

        Returns:
            dict: `problem` (name), `objective`, `mean_loss` (mean optimizee
            loss over the truncation), `grad_norm`, `applied` (False when
            the meta-gradient was not finite), `run_step`, `seconds` and
            `updates` (last proposed updates, for histograms). With PES:
            `problem` and `run_step` of the first particle, means over
            the finite particles (and their two runs), `finite_particles`
            and `updates` None.
        """
        if self.estimator_kind == "pes":
            return self._pes_meta_step()
        if self._run is None or self._run["step"] >= self.horizon:
            self._run = self._new_run()
        run = self._run
        problem = run["problem"]
        start = time.perf_counter()
        out = self._truncation(run)
        norm = tf.linalg.global_norm(out["meta_grads"])
        bad = self._apply_or_skip(run, out, norm)
        self.meta_steps_done += 1
        self._check_skips(bad, problem)
        return {
            "problem": problem.name,
            "objective": float(out["objective"]),
            "mean_loss": float(tf.reduce_mean(out["losses"])),
            "grad_norm": float(norm),
            "applied": not bad,
            "run_step": run["step"],
            "seconds": time.perf_counter() - start,
            "updates": out["updates"],
        }

    def _pes_meta_step(self):
        """`meta_step` with PES: one truncation of every particle."""
        meta_values, runs = self._phi_values(), self._particles
        start = time.perf_counter()
        runs.refresh(meta_values, self._new_run, self.rng)
        grads, outs = self.estimator.estimate(meta_values, runs.particles,
                                              self.rng)
        for i, out in enumerate(outs):
            if not out["finite"]:
                runs.restart(i, meta_values, self._new_run, self.rng)
        norm = (tf.linalg.global_norm(grads) if grads is not None
                else tf.constant(float("nan")))
        bad = 1 if grads is None else int(nonfinite.first_nonfinite(
            [tf.zeros(()), norm]))
        if not bad:
            clipped, _ = tf.clip_by_global_norm(grads, self.clip_norm)
            self.meta_optimizer.apply(clipped, [self.phi[k] for k in
                                                sorted(self.phi)])
        else:
            self.skipped_meta_steps += 1
        self.consecutive_skips = int(nonfinite.consecutive_count(
            self.consecutive_skips, bool(bad)))
        self.meta_steps_done += 1
        first = runs.particles[0]
        self._check_skips(bad, first.problem)
        used = [o for o in outs if o["finite"]] or outs
        return {
            "problem": first.problem.name,
            "objective": float(np.mean([o["objectives"] for o in used])),
            "mean_loss": float(np.mean([o["losses"] for o in used])),
            "grad_norm": float(norm),
            "applied": not bad,
            "run_step": first.step,
            "seconds": time.perf_counter() - start,
            "updates": None,
            "finite_particles": sum(o["finite"] for o in outs),
        }

    def _distributed_truncation(self, run):
        """One truncation per replica; cross-replica means of the results.

        Returns the dict of `truncated_step` plus `meta_grads`, with
        `objective`, `losses` and `meta_grads` averaged over replicas,
        `params` and `state` per replica (carried into the next
        truncation) and `updates` of the first local replica.
        """
        strategy, problem = self.strategy, run["problem"]

        def instance(replica):
            if replica not in run["instances"]:
                run["instances"][replica] = problem.sample(
                    run["seeds"][replica])
            return run["instances"][replica]

        def per_replica(fn):
            return strategy.experimental_distribute_values_from_function(
                lambda ctx: fn(ctx.replica_id_in_sync_group))

        if run["params"] is None:
            run["params"] = per_replica(lambda r: self._start(instance(r))[0])
            run["state"] = per_replica(lambda r: self._start(instance(r))[1])
        task = per_replica(lambda r: problem.task_tensors(instance(r)))
        batches = per_replica(lambda r: problem.batches(
            instance(r), self.unroll + 1,
            pes.batch_seed(run["seeds"][r], run["step"])))
        step = self.estimator.distributed_fn(problem, strategy)
        reduced, params, state, updates = step(
            self._phi_values(), run["params"], run["state"], task, batches)
        reduced.update(params=params, state=state, updates=[
            strategy.experimental_local_results(u)[0] for u in updates])
        return reduced

    def get_state(self):
        """Everything `set_state` needs to continue bitwise.

        Returns:
            `(arrays, info)`: a dict of numpy arrays (phi, the meta-
            optimizer's variables, the current run's parameters and rule
            state) and a JSON-serializable dict (counters, the sampling RNG,
            the current run's problem, seed and step).
        """
        arrays = {f"phi/{k}": v.numpy() for k, v in self.phi.items()}
        for i, v in enumerate(self.meta_optimizer.variables):
            arrays[f"meta_optimizer/{i}"] = v.numpy()
        info = {
            "rng": self.rng.bit_generator.state,
            "skipped_meta_steps": self.skipped_meta_steps,
            "consecutive_skips": self.consecutive_skips,
            "meta_steps_done": self.meta_steps_done,
            "run": None,
        }
        if self._particles is not None:
            pes_arrays, info["pes"] = self._particles.get_state(self.problems)
            arrays.update(pes_arrays)
        if self._run is not None and self.strategy is None:
            run = self._run
            info["run"] = {"problem": self.problems.index(run["problem"]),
                           "seed": run["seed"], "step": run["step"]}
            for i, p in enumerate(run["params"]):
                arrays[f"run/params/{i}"] = np.asarray(p)
            for i, state in enumerate(run["state"]):
                for key, value in state.items():
                    arrays[f"run/state/{i}/{key}"] = np.asarray(value)
        return arrays, info

    def set_state(self, arrays, info):
        """Restores what `get_state` returned (same problems and config)."""
        expected = {f"phi/{k}" for k in self.phi}
        if not expected <= set(arrays):
            raise ValueError(
                "The meta-training state does not match this trainer: "
                f"missing {sorted(expected - set(arrays))}.")
        for key, var in self.phi.items():
            var.assign(arrays[f"phi/{key}"])
        for i, v in enumerate(self.meta_optimizer.variables):
            v.assign(arrays[f"meta_optimizer/{i}"])
        self.rng.bit_generator.state = info["rng"]
        self.skipped_meta_steps = info["skipped_meta_steps"]
        self.consecutive_skips = info["consecutive_skips"]
        self.meta_steps_done = info["meta_steps_done"]
        self._run = None
        if self._particles is not None:
            self._particles.set_state(arrays, info.get("pes"),
                                      self._phi_values(), self._fresh_run)
        if info["run"] is not None:
            run = info["run"]
            problem = self.problems[run["problem"]]
            n = len([k for k in arrays if k.startswith("run/params/")])
            self._run = {
                "problem": problem,
                "instance": problem.sample(run["seed"]),
                "params": [tf.constant(arrays[f"run/params/{i}"])
                           for i in range(n)],
                "state": [{name[len(f"run/state/{i}/"):]: tf.constant(value)
                           for name, value in arrays.items()
                           if name.startswith(f"run/state/{i}/")}
                          for i in range(n)],
                "step": run["step"],
                "seed": run["seed"],
            }

    def train(self, meta_steps, callback=None):
        """Runs `meta_steps` meta-steps; `callback(i, logs)` after each."""
        history = []
        for i in range(meta_steps):
            logs = self.meta_step()
            history.append({k: v for k, v in logs.items() if k != "updates"})
            if callback is not None:
                callback(i, logs)
        return history

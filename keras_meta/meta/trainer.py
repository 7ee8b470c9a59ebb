"""Unrolled meta-training of the LSTM update rule (truncated BPTT).

`MetaTrainer` optimizes phi, the meta-parameters of `lstm_rule`, by gradient
descent on the optimizee losses along unrolled optimization runs:

  * a run samples a problem (from a mixture of `problems.Problem` families)
    and optimizes it for `horizon` steps with the rule;
  * the run is cut into truncations of `unroll` steps; each truncation is one
    compiled `tf.function` that unrolls the steps functionally (the optimizee
    is a pure function of its parameter list: `model.stateless_call` for
    Keras models, nothing is assigned), returns the meta-loss, its gradient
    with respect to phi, and the final parameters and rule state, which are
    carried (without gradient) into the next truncation;
  * meta-loss = mean over the truncation's steps t = 1..T of f(theta_t)
    (`meta_loss="mean"`, the paper's sum divided by T), or of log f(theta_t)
    (`meta_loss="log"`, default, which weights problems of different scales
    alike);
  * `second_order=False` (default, as the paper) stops gradients through the
    optimizee gradients; meta-gradients are clipped by global norm and
    applied with Adam; a non-finite meta-gradient is skipped and counted.

`run_rule` evaluates any `baselines.UpdateRule` (learned or hand-designed) on
a problem instance for many steps, for benchmarks and TensorBoard curves.
"""

import math
import time

import keras
import numpy as np
import tensorflow as tf

from keras_meta import backend as km_backend
from keras_meta import errors
from keras_meta.meta import problems as problems_lib
from keras_meta.optimizers import lstm_rule


def _objective(losses, kind):
    if kind == "log":
        return tf.reduce_mean(tf.math.log(losses + 1e-12))
    if kind == "mean":
        return tf.reduce_mean(losses)
    raise ValueError(f"meta_loss must be 'log' or 'mean', got {kind!r}")


def unrolled_meta_loss(phi, problem, params, state, task, batches, unroll,
                       config, second_order=False, meta_loss="log"):
    """Unrolls `unroll` rule steps from `params`; returns losses and outputs.

    Pure function (traceable). `batches` has `unroll + 1` entries on its
    leading axis: the last one evaluates the final parameters.

    Returns:
        dict with `objective` (the meta-loss), `losses` (f(theta_t) for
        t = 1..unroll), `params`, `state` and `updates` (of the last step).
    """
    losses = []
    updates = None
    for t in range(unroll):
        batch = tf.nest.map_structure(lambda b: b[t], batches)
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = problem.loss(params, task, batch)
        grads = tape.gradient(loss, params)
        if not second_order:
            grads = [tf.stop_gradient(g) for g in grads]
        if t > 0:
            losses.append(loss)
        updates, state = lstm_rule.apply(phi, grads, state, config)
        params = [p + u for p, u in zip(params, updates)]
    batch = tf.nest.map_structure(lambda b: b[unroll], batches)
    losses.append(problem.loss(params, task, batch))
    losses = tf.stack(losses)
    return {
        "objective": _objective(losses, meta_loss),
        "losses": losses,
        "params": params,
        "state": state,
        "updates": updates,
    }


class MetaTrainer:
    """Meta-trains phi of the LSTM rule on a mixture of problem families.

    Args:
        problems: list of `problems.Problem` (the meta-training mixture).
        config: `lstm_rule.RuleConfig`.
        phi: initial phi (dict of arrays); default `lstm_rule.init_phi`.
        unroll: steps per truncation (paper: 20).
        horizon: steps per optimization run (paper: 100).
        meta_lr: Adam learning rate for phi.
        clip_norm: global-norm clip of the meta-gradient.
        second_order: keep second derivatives (default False, as the paper).
        meta_loss: `"log"` or `"mean"` (see module docstring).
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
            replicas (None: one device, as before). Each meta-step then
            runs one truncation per replica, every replica on its own
            instance of the same family (its own seed), with
            `strategy.run`; the meta-gradient is the cross-replica mean
            (the single-device meta-gradient of the mean objective over
            those instances), applied to phi once. `get_state` then omits
            the runs in progress: a resumed job starts fresh runs.
    """

    def __init__(self, problems, config=lstm_rule.RuleConfig(), phi=None,
                 unroll=20, horizon=100, meta_lr=1e-3, clip_norm=1.0,
                 second_order=False, meta_loss="log", jit_compile="auto",
                 seed=0, dtype="float32", problem_weights=None,
                 max_consecutive_skips=20, strategy=None):
        if horizon % unroll:
            raise ValueError(
                f"horizon ({horizon}) must be a multiple of unroll ({unroll})."
            )
        self.problems = list(problems)
        if problem_weights is None:
            problem_weights = [1.0] * len(self.problems)
        if len(problem_weights) != len(self.problems):
            raise ValueError(
                f"Got {len(problem_weights)} problem_weights for "
                f"{len(self.problems)} problems."
            )
        w = np.asarray(problem_weights, dtype=np.float64)
        self.problem_probs = w / w.sum()
        self.config = config
        self.unroll, self.horizon = unroll, horizon
        self.clip_norm = clip_norm
        self.second_order = second_order
        self.meta_loss = meta_loss
        if jit_compile == "auto":
            jit_compile = km_backend.default_jit_compile(strategy=strategy)
        self.jit_compile = bool(jit_compile)
        self.dtype = dtype
        phi = phi if phi is not None else lstm_rule.init_phi(config, seed)
        self.phi = {
            k: keras.Variable(np.asarray(v, dtype), dtype=dtype,
                              name="phi_" + k.replace("/", "_"))
            for k, v in sorted(phi.items())
        }
        self.meta_optimizer = keras.optimizers.Adam(meta_lr)
        self.meta_optimizer.build(list(self.phi.values()))
        self.rng = np.random.default_rng(seed)
        self.skipped_meta_steps = 0
        self.consecutive_skips = 0
        self.max_consecutive_skips = max_consecutive_skips
        self.meta_steps_done = 0
        self._fns = {}
        self._run = None
        self.strategy = strategy
        self._dist_fns = {}

    def phi_numpy(self):
        """Current phi as a dict of numpy arrays."""
        return {k: v.numpy() for k, v in self.phi.items()}

    def _truncation_fn(self, problem):
        key = id(problem)
        if key not in self._fns:
            keys = sorted(self.phi)

            def truncation(phi_values, params, state, task, batches):
                with tf.GradientTape() as tape:
                    tape.watch(phi_values)
                    phi = dict(zip(keys, phi_values))
                    out = unrolled_meta_loss(
                        phi, problem, params, state, task, batches,
                        self.unroll, self.config, self.second_order,
                        self.meta_loss)
                grads = tape.gradient(out["objective"], phi_values)
                out["meta_grads"] = grads
                return out

            self._fns[key] = tf.function(
                truncation, jit_compile=self.jit_compile,
                reduce_retracing=True)
        return self._fns[key]

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
        instance = problem.sample(seed)
        params = [tf.cast(p, self.dtype) for p in instance.params]
        state = [lstm_rule.init_state(p, self.config) for p in params]
        return {"problem": problem, "instance": instance, "params": params,
                "state": state, "step": 0, "seed": seed}

    def meta_step(self):
        """Runs one truncation and applies one meta-update.

        Returns:
            dict: `problem` (name), `objective`, `mean_loss` (mean optimizee
            loss over the truncation), `grad_norm`, `applied` (False when
            the meta-gradient was not finite), `run_step`, `seconds` and
            `updates` (last proposed updates, for histograms).
        """
        if self._run is None or self._run["step"] >= self.horizon:
            self._run = self._new_run()
        run = self._run
        problem = run["problem"]
        start = time.perf_counter()
        if self.strategy is not None:
            out = self._distributed_truncation(run)
        else:
            batches = problem.batches(
                run["instance"], self.unroll + 1,
                run["seed"] + 7919 * (run["step"] + 1))
            fn = self._truncation_fn(problem)
            out = fn([self.phi[k].value for k in sorted(self.phi)],
                     run["params"], run["state"],
                     problem.task_tensors(run["instance"]), batches)
        grads = out["meta_grads"]
        norm = tf.linalg.global_norm(grads)
        finite = bool(tf.math.is_finite(norm)) and bool(
            tf.reduce_all(tf.math.is_finite(out["losses"])))
        if finite:
            clipped, _ = tf.clip_by_global_norm(grads, self.clip_norm)
            self.meta_optimizer.apply(clipped, [self.phi[k] for k in
                                                sorted(self.phi)])
            run["params"], run["state"] = out["params"], out["state"]
            run["step"] += self.unroll
            self.consecutive_skips = 0
        else:
            self.skipped_meta_steps += 1
            self.consecutive_skips += 1
            self._run = None  # start a fresh run
        self.meta_steps_done += 1
        if (self.max_consecutive_skips is not None
                and self.consecutive_skips >= self.max_consecutive_skips):
            losses_ok = bool(tf.reduce_all(tf.math.is_finite(out["losses"])))
            quantity = "meta-gradient" if losses_ok else "optimizee loss"
            raise errors.NonFiniteError(
                f"Meta-training stopped at meta-step {self.meta_steps_done}: "
                f"the {quantity} was not finite in {self.consecutive_skips} "
                f"consecutive truncations (on {problem.name!r}), which were "
                f"skipped ({self.skipped_meta_steps} in all; phi holds its "
                "last finite values). Lower --meta_lr or --clip_norm, or "
                "check the problem.", step=self.meta_steps_done,
                quantity=quantity)
        return {
            "problem": problem.name,
            "objective": float(out["objective"]),
            "mean_loss": float(tf.reduce_mean(out["losses"])),
            "grad_norm": float(norm),
            "applied": finite,
            "run_step": run["step"],
            "seconds": time.perf_counter() - start,
            "updates": out["updates"],
        }

    def _distributed_truncation(self, run):
        """One truncation per replica; cross-replica means of the results.

        Returns the dict of `unrolled_meta_loss` plus `meta_grads`, with
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
            def start(r):
                params = [tf.cast(p, self.dtype) for p in instance(r).params]
                return params, [lstm_rule.init_state(p, self.config)
                                for p in params]
            run["params"] = per_replica(lambda r: start(r)[0])
            run["state"] = per_replica(lambda r: start(r)[1])
        task = per_replica(lambda r: problem.task_tensors(instance(r)))
        batches = per_replica(lambda r: problem.batches(
            instance(r), self.unroll + 1,
            run["seeds"][r] + 7919 * (run["step"] + 1)))
        key = id(problem)
        if key not in self._dist_fns:
            truncation = self._truncation_fn(problem)
            mean = tf.distribute.ReduceOp.MEAN

            @tf.function
            def step(phi_values, params, state, task, batches):
                out = strategy.run(truncation, args=(
                    phi_values, params, state, task, batches))
                reduced = {k: strategy.reduce(mean, out[k], axis=None)
                           for k in ("objective", "losses")}
                reduced["meta_grads"] = [strategy.reduce(mean, g, axis=None)
                                         for g in out["meta_grads"]]
                return reduced, out["params"], out["state"], out["updates"]

            self._dist_fns[key] = step
        reduced, params, state, updates = self._dist_fns[key](
            [self.phi[k].value for k in sorted(self.phi)], run["params"],
            run["state"], task, batches)
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


def run_rule(rule, problem, instance, steps, seed=0, chunk=50):
    """Optimizes `instance` for `steps` steps with an `UpdateRule`.

    Args:
        rule: a `baselines.UpdateRule` (learned or hand-designed).
        problem: its `problems.Problem`.
        instance: from `problem.sample`.
        steps: number of updates.
        seed: seeds the minibatches.
        chunk: minibatches drawn at a time.

    Returns:
        numpy array of `steps + 1` losses: f(theta_0) .. f(theta_steps),
        each on the minibatch of its step (non-finite values kept).
    """
    task = problem.task_tensors(instance)

    @tf.function(reduce_retracing=True)
    def step(params, state, batch):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = problem.loss(params, task, batch)
        grads = tape.gradient(loss, params)
        updates, state = rule.apply(grads, state)
        return loss, [p + u for p, u in zip(params, updates)], state

    @tf.function(reduce_retracing=True)
    def final_loss(params, batch):
        return problem.loss(params, task, batch)

    params = list(instance.params)
    state = rule.init_state(params)
    losses = []
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        batches = problem.batches(instance, n + 1, seed + done)
        for i in range(n):
            batch = tf.nest.map_structure(lambda b: b[i], batches)
            loss, params, state = step(params, state, batch)
            losses.append(float(loss))
        done += n
    last = tf.nest.map_structure(lambda b: b[n], batches)
    losses.append(float(final_loss(params, last)))
    return np.asarray(losses)


def adam_reference_lr(problem):
    """A reasonable untuned Adam learning rate for TensorBoard comparisons."""
    return 0.1 if isinstance(problem, problems_lib.QuadraticProblem) else 1e-2


def log10_mean(x):
    x = np.asarray(x, dtype=np.float64)
    return math.log10(float(np.mean(x))) if np.all(np.isfinite(x)) else float("nan")

"""Persistent evolution strategies (PES; Vicol, Metz and Sohl-Dickstein,
2021): meta-gradients of long unrolled runs from forward passes only.

Each particle is an antithetic pair of optimization runs of one problem
instance: the positive run applies the rule with meta-parameters
`theta + eps_k` in truncation k, the negative run `theta - eps_k`, both on
the same minibatches. `eps_k ~ N(0, sigma^2 I)` is drawn afresh for every
truncation and summed into the particle's accumulated perturbation
`xi = eps_1 + ... + eps_k` (reset to zero when the particle starts a new
run). The estimate of truncation k is

    g = mean over particles of  xi * (L+_k - L-_k) / (2 sigma^2)

where `L+-_k` are the meta-losses of the two runs' k-th truncations
(`truncated_step.objective`; each truncation runs as
`forward_truncation`). Since the runs carry their parameters and
rule state across truncations, `xi` is the total perturbation that the
k-th truncation's losses depend on, and `g` is an unbiased estimate of the
derivative of the (Gaussian-smoothed) k-th truncation's meta-loss with
respect to meta-parameters shared by the whole run so far: no truncation
bias, unlike truncated backpropagation or plain (non-persistent) ES.

Unrolls are forward only: the inner loop takes gradients of the optimizee
loss but nothing is differentiated with respect to the meta-parameters.
Meta-parameters are passed as the list of their values in the order of
sorted keys, as `tbptt.TruncatedBackprop` does.
"""

import numpy as np
import tensorflow as tf

from keras_meta import nonfinite
from keras_meta.meta.truncated_step import objective as loss_objective
from keras_meta.rules import inner_loop

META_OBJECTIVES = ("train", "validation")

# Minibatch seeds of a run: its seed plus this times the truncation's end.
BATCH_SEED_STRIDE = 7919


def batch_seed(run_seed, step):
    """The minibatch seed of the truncation of a run starting at `step`."""
    return run_seed + BATCH_SEED_STRIDE * (step + 1)


def forward_truncation(rule, meta_params, problem, params, state, task,
                       batches, unroll, meta_loss="log", first_step=0):
    """`truncated_step` without meta-gradients, as a `tf.while_loop`.

    The same steps and losses as `truncated_step(..., second_order=False)`
    (each step is `inner_loop.unroll` of one step), but a compiled
    truncation holds one copy of the step whatever `unroll` is, so it
    traces in about the time of one step. Nothing is differentiated with
    respect to `meta_params`. The rule sees step indices `first_step + i`
    (PES passes the run's step count, so a rule that reads `step` sees its
    place in the whole run).

    Returns:
        `(objective, losses, params, state)`; `losses` are
        f(theta_t) for t = 1..unroll.
    """
    def loss_fn(values, step):
        batch = tf.nest.map_structure(lambda b: b[step], batches)
        return problem.loss(values, task, batch)

    def body(i, values, state, losses):
        values, state, step_losses = inner_loop.unroll(
            rule, meta_params, values, lambda v, _: loss_fn(v, i), 1,
            state=state, second_order=False, first_step=first_step + i)
        return i + 1, values, state, losses.write(i, step_losses[0])

    dtype = params[0].dtype
    _, params, state, losses = tf.while_loop(
        lambda i, *_: i < unroll, body,
        (tf.constant(0), list(params), state,
         tf.TensorArray(dtype, size=unroll)))
    final = tf.reshape(tf.cast(loss_fn(params, unroll), dtype), [1])
    losses = tf.concat([losses.stack()[1:], final], 0)
    return loss_objective(losses, meta_loss), losses, params, state


class Particle:
    """One antithetic pair of runs of a problem instance, in progress.

    Attributes:
        problem, instance, seed: the `problems.Problem`, its instance and
            the seed it was sampled from (which also seeds minibatches).
        horizon: steps of this run; `step`: steps done.
        pos, neg: `(params, rule state)` of the positive and negative run.
        accum: the accumulated perturbation `xi`, a list like the
            meta-parameter values.
    """

    def __init__(self, run, horizon, meta_values):
        self.problem, self.instance = run["problem"], run["instance"]
        self.seed, self.step = run["seed"], run["step"]
        self.horizon = horizon
        self.pos = (list(run["params"]), run["state"])
        self.neg = (list(run["params"]), run["state"])
        self.accum = [tf.zeros_like(v) for v in meta_values]

    @property
    def done(self):
        return self.step >= self.horizon


class PersistentES:
    """PES meta-gradients of truncations of `rule`, one compiled function
    per problem.

    Args:
        rule: a `keras_meta.rules.UpdateRule` whose meta-parameters are a
            dict of tensors.
        keys: the sorted keys of that dict.
        unroll: steps per truncation.
        sigma: standard deviation of the perturbations.
        meta_loss: of `truncated_step` (`"log"` makes the estimate
            invariant to a problem's loss scale).
        jit_compile: compile each truncation pair with XLA.
        vectorize: run the positive and negative runs of a pair as one
            batched program (`tf.vectorized_map`) instead of two copies of
            the graph.
        meta_objective: `"train"`: the meta-loss of the truncation's
            training losses (`truncated_step`); `"validation"`: of the
            loss on held-out examples at the truncation's final
            parameters, `problem.validation_loss(params, task, batch)` on
            its last minibatch (problems without it are refused).
    """

    def __init__(self, rule, keys, unroll, sigma=0.01, meta_loss="log",
                 jit_compile=False, vectorize=False, meta_objective="train"):
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}.")
        if meta_objective not in META_OBJECTIVES:
            raise ValueError(f"meta_objective must be one of "
                             f"{META_OBJECTIVES}, got {meta_objective!r}.")
        self.meta_objective = meta_objective
        self.rule, self.keys = rule, list(keys)
        self.unroll, self.sigma = unroll, float(sigma)
        self.meta_loss, self.jit_compile = meta_loss, jit_compile
        self.vectorize = vectorize
        self._fns = {}

    def _one_run(self, problem, meta_values, params, state, task, batches,
                 first_step):
        meta_params = dict(zip(self.keys,
                               [tf.stop_gradient(v) for v in meta_values]))
        objective, losses, params, state = forward_truncation(
            self.rule, meta_params, problem, params, state, task, batches,
            self.unroll, self.meta_loss, first_step)
        if self.meta_objective == "validation":
            last = tf.nest.map_structure(lambda b: b[self.unroll], batches)
            objective = loss_objective(tf.reshape(problem.validation_loss(
                params, task, last), [1]), self.meta_loss)
        return objective, losses, params, state

    def pair_fn(self, problem):
        """`fn(meta_values, eps, pos, neg, task, batches, first_step) ->
        (objectives, losses, pos, neg)`: one truncation of both runs of a
        pair, whose runs have taken `first_step` steps (an int tensor);
        `objectives` has shape [2] (positive, negative), `losses`
        [2, unroll], `pos` and `neg` the new `(params, state)`."""
        key = id(problem)
        if key in self._fns:
            return self._fns[key]
        if self.meta_objective == "validation" and not hasattr(
                problem, "validation_loss"):
            raise ValueError(
                f"meta_objective='validation' needs problems with held-out "
                f"examples (validation_loss); {problem.name!r} has none.")

        def looped(meta_values, eps, pos, neg, task, batches, first_step):
            plus = [m + e for m, e in zip(meta_values, eps)]
            minus = [m - e for m, e in zip(meta_values, eps)]
            a = self._one_run(problem, plus, *pos, task, batches, first_step)
            b = self._one_run(problem, minus, *neg, task, batches,
                              first_step)
            return (tf.stack([a[0], b[0]]), tf.stack([a[1], b[1]]),
                    (a[2], a[3]), (b[2], b[3]))

        def vectorized(meta_values, eps, pos, neg, task, batches,
                       first_step):
            signs = tf.constant([1.0, -1.0], meta_values[0].dtype)
            meta = [m + tf.reshape(signs, [2] + [1] * len(e.shape)) * e
                    for m, e in zip(meta_values, eps)]
            runs = tf.nest.map_structure(lambda p, n: tf.stack([p, n]),
                                         pos, neg)
            obj, losses, params, state = tf.vectorized_map(
                lambda args: self._one_run(problem, args[0], *args[1], task,
                                           batches, first_step),
                (meta, runs))
            split = lambda i: tf.nest.map_structure(  # noqa: E731
                lambda t: t[i], (params, state))
            return obj, losses, split(0), split(1)

        self._fns[key] = tf.function(
            vectorized if self.vectorize else looped,
            jit_compile=self.jit_compile, reduce_retracing=True)
        return self._fns[key]

    def perturbation(self, meta_values, rng):
        """`eps`: one N(0, sigma^2) draw per meta-parameter entry, from the
        NumPy generator `rng`, in the values' dtypes."""
        return [tf.constant((rng.standard_normal(tuple(v.shape))
                             * self.sigma).astype(v.dtype.as_numpy_dtype))
                for v in meta_values]

    def truncation(self, meta_values, particle, rng):
        """Runs one truncation of `particle`'s pair, updates it in place
        when its losses are finite.

        Returns:
            dict: `objectives` (numpy [2]), `losses` ([2, unroll]),
            `finite`, and `grad` (this particle's term of the estimate, a
            list like `meta_values`; None when not finite).
        """
        problem = particle.problem
        eps = self.perturbation(meta_values, rng)
        batches = problem.batches(particle.instance, self.unroll + 1,
                                  batch_seed(particle.seed, particle.step))
        objectives, losses, pos, neg = self.pair_fn(problem)(
            meta_values, eps, particle.pos, particle.neg,
            problem.task_tensors(particle.instance), batches,
            tf.constant(particle.step, tf.int32))
        finite = not int(nonfinite.first_nonfinite([losses, objectives]))
        out = {"objectives": objectives.numpy(), "losses": losses.numpy(),
               "finite": finite, "grad": None}
        if finite:
            accum = [a + e for a, e in zip(particle.accum, eps)]
            scale = (objectives[0] - objectives[1]) / (2 * self.sigma ** 2)
            out["grad"] = [a * tf.cast(scale, a.dtype) for a in accum]
            particle.pos, particle.neg, particle.accum = pos, neg, accum
            particle.step += self.unroll
        return out

    def estimate(self, meta_values, particles, rng):
        """One truncation of every particle and the mean of the finite
        particles' terms.

        Returns:
            `(grads, outs)`: the estimate (a list like `meta_values`, or
            None when no particle was finite) and each particle's
            `truncation` output.
        """
        outs = [self.truncation(meta_values, p, rng) for p in particles]
        terms = [o["grad"] for o in outs if o["finite"]]
        if not terms:
            return None, outs
        grads = [tf.add_n(list(t)) / len(terms) for t in zip(*terms)]
        return grads, outs


def _flat(prefix, nest):
    return {f"{prefix}/{i}": np.asarray(t)
            for i, t in enumerate(tf.nest.flatten(nest))}


def _unflat(prefix, arrays, structure):
    flat = tf.nest.flatten(structure)
    return tf.nest.pack_sequence_as(
        structure, [tf.constant(arrays[f"{prefix}/{i}"])
                    for i in range(len(flat))])


class ParticleRuns:
    """The particles of a PES meta-training run: their runs' lifecycle and
    their part of a checkpoint.

    Args:
        estimator: a `PersistentES`.
        num_particles: antithetic pairs per meta-step.
        horizon: steps per run, a multiple of the estimator's unroll.
        horizon_range: optional `(low, high)`: each new run draws its
            horizon uniformly among the multiples of unroll in this range
            (task augmentation); `horizon` is then unused.
        stagger: the particles' first runs stop after a uniform random
            number of truncations (at most a horizon), so that particles
            are spread over the phases of their runs instead of all
            starting and ending together.
    """

    def __init__(self, estimator, num_particles, horizon, horizon_range=None,
                 stagger=True):
        self.estimator, self.num_particles = estimator, num_particles
        self.unroll = estimator.unroll
        self.horizon, self.horizon_range = horizon, horizon_range
        for h in ([horizon] if horizon_range is None else horizon_range):
            if h < self.unroll or h % self.unroll:
                raise ValueError(f"PES horizons ({h}) must be positive "
                                 f"multiples of unroll ({self.unroll}).")
        self.stagger = stagger
        self.particles = None

    def _horizon(self, rng, first):
        low, high = self.horizon_range or (self.horizon, self.horizon)
        horizon = self.unroll * int(rng.integers(low // self.unroll,
                                                 high // self.unroll + 1))
        if first and self.stagger:
            horizon = self.unroll * int(rng.integers(
                1, horizon // self.unroll + 1))
        return horizon

    def refresh(self, meta_values, new_run, rng):
        """Starts the particles (first call) and new runs for finished
        ones. `new_run()` returns a run dict as `MetaTrainer._new_run`."""
        if self.particles is None:
            self.particles = [
                Particle(new_run(), self._horizon(rng, True), meta_values)
                for _ in range(self.num_particles)]
        for i, p in enumerate(self.particles):
            if p.done:
                self.particles[i] = Particle(new_run(),
                                             self._horizon(rng, False),
                                             meta_values)

    def restart(self, index, meta_values, new_run, rng):
        """A fresh run for particle `index` (after non-finite losses)."""
        self.particles[index] = Particle(new_run(), self._horizon(rng, False),
                                         meta_values)

    def get_state(self, problems):
        """`(arrays, info)` of the particles (`MetaTrainer.get_state`)."""
        arrays, info = {}, []
        for i, p in enumerate(self.particles or []):
            info.append({"problem": problems.index(p.problem),
                         "seed": p.seed, "step": p.step,
                         "horizon": p.horizon})
            for sign, run in (("pos", p.pos), ("neg", p.neg)):
                arrays.update(_flat(f"pes/{i}/{sign}/params", run[0]))
                arrays.update(_flat(f"pes/{i}/{sign}/state", run[1]))
            arrays.update(_flat(f"pes/{i}/accum", p.accum))
        return arrays, (None if self.particles is None else info)

    def set_state(self, arrays, info, meta_values, rebuild):
        """Restores `get_state`'s output; `rebuild(problem_index, seed)`
        returns the run dict of a fresh run of that instance."""
        if info is None:
            self.particles = None
            return
        self.particles = []
        for i, entry in enumerate(info):
            run = rebuild(entry["problem"], entry["seed"])
            p = Particle(run, entry["horizon"], meta_values)
            p.step = entry["step"]
            p.pos, p.neg = [
                (_unflat(f"pes/{i}/{s}/params", arrays, run["params"]),
                 _unflat(f"pes/{i}/{s}/state", arrays, run["state"]))
                for s in ("pos", "neg")]
            p.accum = _unflat(f"pes/{i}/accum", arrays, p.accum)
            self.particles.append(p)

"""One meta-training truncation of the coordinatewise LSTM rule in PyTorch.

The peer of `benchmarks/lopt_peers.py`: the same rule as
`keras_meta.rules.lstm` with `descent="adam"` (features: the
log/sign gradient preprocessing, the Adam direction and the clipped
normalized gradient; a 2-layer LSTM shared over coordinates; two scaled
outputs that modulate the Adam direction), the same problems (the paper's
quadratic and the 784-20-10 sigmoid MLP on Gaussian inputs) and the same
truncation: `unroll` optimizee steps with first-order meta-gradients
(optimizee gradients detached), meta-loss the mean log loss over the
truncation, global-norm clipping and Adam on the rule's parameters. A run
restarts on a new problem every `horizon` steps, as `MetaTrainer` does.

Example:

    trainer = Truncations("quadratic", unroll=20, horizon=100)
    trainer.step()   # one truncation and one meta-update
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

P = 10.0


def init_phi(hidden=20, layers=2, inputs=4, lr=1e-2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    phi, size = {}, inputs
    for layer in range(layers):
        limit = math.sqrt(6.0 / (size + hidden + 4 * hidden))
        phi[f"lstm{layer}/kernel"] = (torch.rand(size + hidden, 4 * hidden,
                                                 generator=gen) * 2 - 1) * limit
        phi[f"lstm{layer}/bias"] = torch.zeros(4 * hidden)
        size = hidden
    phi["out/kernel"] = torch.randn(hidden, 2, generator=gen) * 0.01
    phi["out/bias"] = torch.zeros(2)
    phi["log_lr"] = torch.tensor(math.log(lr))
    return {k: v.requires_grad_(True) for k, v in phi.items()}


def init_state(n, hidden=20, layers=2):
    zeros = torch.zeros
    return dict(h=zeros(layers, n, hidden), c=zeros(layers, n, hidden),
                m=zeros(n), v=zeros(n), t=0)


def preprocess(g):
    big = g.abs() >= math.exp(-P)
    f1 = torch.where(big, torch.log(g.abs().clamp_min(math.exp(-P))) / P,
                     -torch.ones_like(g))
    f2 = torch.where(big, torch.sign(g), g * math.exp(P))
    return torch.stack([f1, f2], -1)


def apply(phi, g, state, b1=0.9, b2=0.999, eps=1e-8):
    """(update, new_state) for a flat gradient `g`."""
    t = state["t"] + 1
    m = b1 * state["m"] + (1 - b1) * g
    v = b2 * state["v"] + (1 - b2) * g * g
    denom = torch.sqrt(v / (1 - b2 ** t)) + eps
    nominal = m / (1 - b1 ** t) / denom
    x = torch.cat([preprocess(g), nominal[:, None],
                   (g / denom).clamp(-5, 5)[:, None]], -1)
    hs, cs = [], []
    for layer in range(state["h"].shape[0]):
        z = torch.cat([x, state["h"][layer]], -1) @ phi[f"lstm{layer}/kernel"]
        i, f, gg, o = (z + phi[f"lstm{layer}/bias"]).chunk(4, -1)
        c = torch.sigmoid(f + 1) * state["c"][layer] + torch.sigmoid(
            i) * torch.tanh(gg)
        x = torch.sigmoid(o) * torch.tanh(c)
        hs.append(x)
        cs.append(c)
    out = x @ phi["out/kernel"] + phi["out/bias"]
    d, s = out[:, 0] * 0.1, out[:, 1] * 0.1
    update = -torch.exp(phi["log_lr"]) * torch.exp(s) * (nominal + d)
    return update, dict(h=torch.stack(hs), c=torch.stack(cs), m=m, v=v, t=t)


class Quadratic:
    def sample(self, rng):
        f = lambda a: torch.from_numpy(a.astype("float32"))  # noqa: E731
        self.w = f(rng.uniform(size=(128, 10, 10)))
        self.y = f(rng.uniform(size=(128, 10)))
        return [f(rng.normal(0, 0.01, size=(128, 10)))]

    def batches(self, n, rng):
        return [None] * n

    def loss(self, params, batch):
        r = torch.einsum("bij,bj->bi", self.w, params[0]) - self.y
        return (r * r).sum(-1).mean()


class MLP:
    def sample(self, rng):
        def dense(a, b):
            limit = math.sqrt(6.0 / (a + b))
            return torch.from_numpy(
                rng.uniform(-limit, limit, (a, b)).astype("float32"))
        return [dense(784, 20), torch.zeros(20), dense(20, 10),
                torch.zeros(10)]

    def batches(self, n, rng):
        x = torch.from_numpy(rng.normal(size=(n, 128, 784)).astype("float32"))
        y = torch.from_numpy(rng.integers(0, 10, (n, 128)))
        return list(zip(x, y))

    def loss(self, params, batch):
        x, y = batch
        h = torch.sigmoid(x @ params[0] + params[1])
        return F.cross_entropy(h @ params[2] + params[3], y)


PROBLEMS = {"quadratic": Quadratic, "mlp_teacher": MLP}


class Truncations:
    """Meta-trains the rule on one problem family, a truncation per step."""

    def __init__(self, problem, unroll=20, horizon=100, meta_lr=1e-3,
                 clip_norm=1.0, seed=0):
        self.problem = PROBLEMS[problem]()
        self.unroll, self.horizon, self.clip_norm = unroll, horizon, clip_norm
        self.phi = init_phi(seed=seed)
        self.optimizer = torch.optim.Adam(self.phi.values(), lr=meta_lr)
        self.rng = np.random.default_rng(seed)
        self.run_step = horizon

    def step(self):
        if self.run_step >= self.horizon:
            self.params = self.problem.sample(self.rng)
            self.state = [init_state(p.numel()) for p in self.params]
            self.run_step = 0
        batches = self.problem.batches(self.unroll + 1, self.rng)
        params = [p.detach().requires_grad_(True) for p in self.params]
        state = self.state
        losses = []
        for t in range(self.unroll):
            loss = self.problem.loss(params, batches[t])
            grads = torch.autograd.grad(loss, params, retain_graph=t > 0)
            if t > 0:
                losses.append(loss)
            new_params, new_state = [], []
            for p, g, s in zip(params, grads, state):
                u, s = apply(self.phi, g.reshape(-1), s)
                new_params.append(p + u.reshape(p.shape))
                new_state.append(s)
            params, state = new_params, new_state
        losses.append(self.problem.loss(params, batches[self.unroll]))
        objective = torch.log(torch.stack(losses) + 1e-12).mean()
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(self.phi.values(), self.clip_norm)
        self.optimizer.step()
        self.params = [p.detach() for p in params]
        self.state = [{k: (v.detach() if torch.is_tensor(v) else v)
                       for k, v in s.items()} for s in state]
        self.run_step += self.unroll
        return float(objective.detach())

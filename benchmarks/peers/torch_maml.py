"""MAML meta-steps in PyTorch with `torch.func`: the peer of the benchmarks.

The same models, shapes, inner steps and second-order setting as the
keras_meta side of `benchmarks/maml_peers.py`, written the way the PyTorch
literature does it today (learn2learn and `higher` no longer install):

* `"vmap"`: the tasks of a meta-batch run as one `torch.func.vmap` over a
  per-task function whose inner loop uses `torch.func.grad` (nested
  functional transforms give second-order meta-gradients).
* `"loop"`: a Python loop over tasks with `torch.autograd.grad(...,
  create_graph=second_order)`, the form of most public MAML code.

Batch normalization uses the batch statistics (training mode) and keeps no
running averages, as MAML's reference implementation does during
meta-training.

Example:

    step = MamlStep(conv4_params(ways=5), conv4_forward, "cross_entropy",
                    inner_lr=0.4, inner_steps=1, second_order=True,
                    mode="vmap", meta_lr=1e-3)
    loss = step(episode)   # dict of torch tensors with a leading task axis
"""

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap  # noqa: F401

MODES = ("vmap", "loop")


def _init_dense(fan_in, fan_out, gen):
    limit = (6.0 / (fan_in + fan_out)) ** 0.5
    return (torch.rand(fan_in, fan_out, generator=gen) * 2 - 1) * limit


def mlp_params(sizes=(1, 40, 40, 1), seed=0):
    """Glorot-uniform kernels and zero biases of an MLP, as Keras builds."""
    gen = torch.Generator().manual_seed(seed)
    params = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"w{i}"] = _init_dense(a, b, gen)
        params[f"b{i}"] = torch.zeros(b)
    return params


def mlp_forward(params, x):
    """ReLU MLP; the last layer is linear."""
    layers = len(params) // 2
    for i in range(layers):
        x = x @ params[f"w{i}"] + params[f"b{i}"]
        if i < layers - 1:
            x = F.relu(x)
    return x


def conv4_params(ways=5, filters=64, channels=1, seed=0):
    """Four 3x3 convolutions with batch norm, and a linear head."""
    gen = torch.Generator().manual_seed(seed)
    params = {}
    c_in = channels
    for i in range(4):
        fan_in, fan_out = 9 * c_in, 9 * filters
        limit = (6.0 / (fan_in + fan_out)) ** 0.5
        params[f"conv{i}"] = (torch.rand(filters, c_in, 3, 3, generator=gen)
                              * 2 - 1) * limit
        params[f"conv{i}_b"] = torch.zeros(filters)
        params[f"bn{i}_g"] = torch.ones(filters)
        params[f"bn{i}_b"] = torch.zeros(filters)
        c_in = filters
    params["head"] = _init_dense(filters, ways, gen)
    params["head_b"] = torch.zeros(ways)
    return params


def _same_padding(x, kernel=3, stride=2):
    """Pads NCHW `x` as TensorFlow's padding="same" does (the extra row and
    column go after), so that both sides compute the same network."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def conv4_forward(params, x):
    """Strided conv4 (the reference Omniglot network); x is NCHW.

    Keras's defaults: "same" padding, batch-norm epsilon 1e-3."""
    for i in range(4):
        x = F.conv2d(_same_padding(x), params[f"conv{i}"],
                     params[f"conv{i}_b"], stride=2)
        x = F.batch_norm(x, None, None, params[f"bn{i}_g"], params[f"bn{i}_b"],
                         training=True, eps=1e-3)
        x = F.relu(x)
    x = x.mean(dim=(2, 3))
    return x @ params["head"] + params["head_b"]


def _loss(kind, pred, y):
    if kind == "mse":
        return F.mse_loss(pred, y)
    return F.cross_entropy(pred, y)


class MamlStep:
    """One MAML meta-step (inner loop, meta-gradient, Adam update).

    Args:
        params: dict of parameter tensors (copied; they become leaves).
        forward: `forward(params, x) -> predictions`.
        loss: "mse" or "cross_entropy".
        inner_lr: inner SGD rate.
        inner_steps: inner SGD steps per task.
        second_order: keep second derivatives through the inner steps.
        mode: "vmap" or "loop" (see the module docstring).
        meta_lr: Adam's learning rate for the meta-update.
    """

    def __init__(self, params, forward, loss, inner_lr, inner_steps,
                 second_order, mode, meta_lr=1e-3):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        self.params = {k: v.clone().requires_grad_(True)
                       for k, v in params.items()}
        self.forward = forward
        self.loss = loss
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.second_order = second_order
        self.mode = mode
        self.optimizer = torch.optim.Adam(self.params.values(), lr=meta_lr)

    def _task_loss(self, params, x, y):
        return _loss(self.loss, self.forward(params, x), y)

    def _adapt_functional(self, params, sx, sy):
        fast = params
        for _ in range(self.inner_steps):
            grads = grad(self._task_loss)(fast, sx, sy)
            if not self.second_order:
                grads = {k: g.detach() for k, g in grads.items()}
            fast = {k: fast[k] - self.inner_lr * grads[k] for k in fast}
        return fast

    def _query_loss_functional(self, params, sx, sy, qx, qy):
        return self._task_loss(self._adapt_functional(params, sx, sy), qx, qy)

    def _query_loss_loop(self, sx, sy, qx, qy):
        fast = dict(self.params)
        for _ in range(self.inner_steps):
            loss = self._task_loss(fast, sx, sy)
            grads = torch.autograd.grad(loss, list(fast.values()),
                                        create_graph=self.second_order)
            fast = {k: w - self.inner_lr * g
                    for (k, w), g in zip(fast.items(), grads)}
        return self._task_loss(fast, qx, qy)

    def meta_loss(self, episode):
        sx, sy = episode["support_x"], episode["support_y"]
        qx, qy = episode["query_x"], episode["query_y"]
        if self.mode == "vmap":
            losses = vmap(self._query_loss_functional,
                          in_dims=(None, 0, 0, 0, 0),
                          randomness="same")(self.params, sx, sy, qx, qy)
            return losses.mean()
        losses = [self._query_loss_loop(sx[i], sy[i], qx[i], qy[i])
                  for i in range(sx.shape[0])]
        return torch.stack(losses).mean()

    def __call__(self, episode):
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.meta_loss(episode)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

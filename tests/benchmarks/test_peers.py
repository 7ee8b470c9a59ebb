"""The PyTorch peers compute what keras_meta computes (where torch exists).

The speed benchmarks compare keras_meta with `benchmarks/peers`; these tests
check that both sides run the same model and the same meta-gradient, so the
timings compare like with like. Skipped without PyTorch (the `bench` extra).
"""

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_meta
from keras_meta.maml import meta_gradients
from keras_meta.rules import lstm as lstm_rule

torch = pytest.importorskip("torch")

from benchmarks.peers import torch_l2l  # noqa: E402
from benchmarks.peers import torch_maml  # noqa: E402
from benchmarks.peers import workloads as maml_peers  # noqa: E402


def _torch_params(net, conv):
    """The Keras model's weights under the peer's names and layouts."""
    values = [v.numpy() for v in net.trainable_variables]
    if not conv:
        names = [f"{w}{i}" for i in range(len(values) // 2) for w in "wb"]
        return {n: torch.from_numpy(v) for n, v in zip(names, values)}
    params = {}
    for i in range(4):
        kernel, bias, gamma, beta = values[4 * i:4 * i + 4]
        params[f"conv{i}"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1)
                                              .copy())
        params[f"conv{i}_b"] = torch.from_numpy(bias)
        params[f"bn{i}_g"] = torch.from_numpy(gamma)
        params[f"bn{i}_b"] = torch.from_numpy(beta)
    params["head"], params["head_b"] = (torch.from_numpy(v)
                                        for v in values[16:])
    return params


@pytest.mark.parametrize("model,order,mode", [
    ("sinusoid", "second", "vmap"), ("sinusoid", "second", "loop"),
    ("sinusoid", "first", "vmap"), ("conv4", "second", "loop"),
    ("conv4", "first", "vmap"),
])
def test_peer_meta_gradient_equals_keras_meta(model, order, mode):
    keras.utils.set_random_seed(0)
    conv = model == "conv4"
    if conv:
        net = maml_peers.conv4_keras(filters=8)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        lr = 0.4
        forward, kind = torch_maml.conv4_forward, "cross_entropy"
    else:
        net = keras.Sequential([
            keras.Input((1,)), keras.layers.Dense(40, activation="relu"),
            keras.layers.Dense(40, activation="relu"), keras.layers.Dense(1)])
        loss, lr, forward, kind = "mse", 0.01, torch_maml.mlp_forward, "mse"
    arrays = maml_peers.episode_arrays(model, tasks=3)
    maml = keras_meta.MAML(net, inner_learning_rate=lr, inner_steps=2,
                           first_order=order == "first")
    maml.compile(optimizer="sgd", loss=loss)
    meta_loss, grads, _, _ = meta_gradients.compute(
        maml, {k: tf.constant(v) for k, v in arrays.items()})

    step = torch_maml.MamlStep(_torch_params(net, conv), forward, kind, lr,
                               2, order == "second", mode)
    episode = {k: torch.from_numpy(v) for k, v in arrays.items()}
    if conv:
        for key in ("support_x", "query_x"):
            episode[key] = episode[key].permute(0, 1, 4, 2, 3).contiguous()
        for key in ("support_y", "query_y"):
            episode[key] = episode[key].long()
    peer_loss = step.meta_loss(episode)
    peer_grads = torch.autograd.grad(peer_loss, list(step.params.values()))
    np.testing.assert_allclose(float(peer_loss), float(meta_loss), rtol=1e-5)
    for name, g, pg in zip(step.params, grads, peer_grads):
        pg = pg.numpy()
        if pg.ndim == 4:
            pg = pg.transpose(2, 3, 1, 0)
        np.testing.assert_allclose(pg, g.numpy(), rtol=2e-3, atol=2e-5,
                                   err_msg=name)


def test_l2l_peer_rule_equals_lstm_rule():
    config = lstm_rule.RuleConfig(hidden_size=20, num_layers=2,
                                  descent="adam")
    phi = torch_l2l.init_phi(seed=3)
    with torch.no_grad():
        phi["out/kernel"].normal_(0, 0.5)  # large enough to matter
    tf_phi = {k: tf.constant(v.detach().numpy()) for k, v in phi.items()}
    rng = np.random.default_rng(0)
    tf_state = lstm_rule.init_state((50,), config)
    state = torch_l2l.init_state(50)
    for _ in range(3):
        g = rng.normal(0, 1e-2, 50).astype("float32")
        g[:3] = [0.0, 1e-7, 30.0]  # both branches of the preprocessing
        update, state = torch_l2l.apply(phi, torch.from_numpy(g), state)
        tf_update, tf_state = lstm_rule.apply(tf_phi, tf.constant(g),
                                              tf_state, config)
        np.testing.assert_allclose(update.detach().numpy(), tf_update.numpy(),
                                   rtol=1e-4, atol=1e-9)


def test_conv4_flop_count():
    # 14x14x64x9 + 3 x (7x7, 4x4, 2x2)x64x64x9 multiply-adds, and the head.
    macs = 9 * 64 * (14 * 14 + 64 * (7 * 7 + 4 * 4 + 2 * 2)) + 64 * 5
    assert maml_peers.conv4_forward_flops() == 2 * macs
    # Second order doubles the inner loop's share.
    first = maml_peers.conv4_step_flops(8, 1, False)
    second = maml_peers.conv4_step_flops(8, 1, True)
    assert second - first == 8 * 3 * 5 * maml_peers.conv4_forward_flops()

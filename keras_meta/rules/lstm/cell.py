"""The stacked LSTM shared by every coordinate (or tensor) of the rule."""

from keras import ops


def lstm_cell(x, h, c, kernel, bias):
    """One LSTM cell step on rows `x`; forget-gate bias +1."""
    z = ops.matmul(ops.concatenate([x, h], axis=-1), kernel) + bias
    i, f, g, o = ops.split(z, 4, axis=-1)
    c_new = ops.sigmoid(f + 1.0) * c + ops.sigmoid(i) * ops.tanh(g)
    h_new = ops.sigmoid(o) * ops.tanh(c_new)
    return h_new, c_new


def run_lstm(phi, x, h_all, c_all, config, dtype):
    """Runs the stacked LSTM and output layer on rows `x`.

    Args:
        phi: the meta-parameter dict (`lstm{i}/kernel`, `lstm{i}/bias`,
            `out/kernel`, `out/bias`), cast to `dtype`.
        x: `[rows, input_size]` features.
        h_all, c_all: `[rows, num_layers, hidden_size]` states.

    Returns:
        `(out, hs, cs)`: `[rows, output_size]` linear outputs and the new
        per-layer states.
    """
    hs, cs = [], []
    for layer in range(config.num_layers):
        h, c = lstm_cell(
            x,
            h_all[:, layer],
            c_all[:, layer],
            ops.cast(phi[f"lstm{layer}/kernel"], dtype),
            ops.cast(phi[f"lstm{layer}/bias"], dtype),
        )
        hs.append(h)
        cs.append(c)
        x = h
    out = ops.matmul(x, ops.cast(phi["out/kernel"], dtype)) + ops.cast(
        phi["out/bias"], dtype
    )
    return out, hs, cs


def new_state(state, hs, cs, m, v, t, shape):
    """The state dict after a step: LSTM states, moments, step count."""
    return {
        "h": ops.reshape(ops.stack(hs, axis=1), ops.shape(state["h"])),
        "c": ops.reshape(ops.stack(cs, axis=1), ops.shape(state["c"])),
        "m": ops.reshape(m, shape),
        "v": ops.reshape(v, shape),
        "t": t,
    }

"""All tasks of a meta-batch in one program, for stacks of Dense layers.

MAML adapts a separate copy of the weights per task, which Keras layers
cannot hold: `stateless_call` takes one value per variable. The general
task formulations therefore map over tasks (`tf.map_fn`,
`tf.vectorized_map`), paying per-op overhead once per task or a long
compile. For the most common regression network, a `keras.Sequential` of
plain `Dense` layers, this module runs the layers' arithmetic directly on
weights stacked along a leading task axis: one batched matmul per layer for
all tasks (`[tasks, n, in] @ [tasks, in, out]`), so a meta-step is a few
dozen ops whatever the meta-batch size. Weights may also be shared (no task
axis), as the layers ANIL leaves unadapted are.

`plan(model)` says whether a model qualifies (and how to run it); `forward`
is the batched forward pass. `keras_meta.MAML` uses them for
`task_parallelism="batched"`, which `"auto"` picks when a plan exists and
the inner rule is elementwise.
"""

import keras
import tensorflow as tf


def plan(model):
    """The layers of `model` as `(kernel_index, bias_index, activation)`.

    Indices point into `model.trainable_variables` (`bias_index` None for
    `use_bias=False`). Returns None unless the model is a `keras.Sequential`
    of plain `keras.layers.Dense` layers (not subclasses), all trainable,
    without regularizers, LoRA or non-trainable variables, on one float
    dtype: the models whose forward pass `forward` reproduces exactly.
    """
    if not isinstance(model, keras.Sequential) or model.non_trainable_variables:
        return None
    variables = {id(v): i for i, v in enumerate(model.trainable_variables)}
    steps = []
    for layer in model.layers:
        if type(layer) is not keras.layers.Dense or not layer.trainable:
            return None
        if (layer.kernel_regularizer or layer.bias_regularizer
                or layer.activity_regularizer or layer.lora_enabled
                or layer.dtype_policy.compute_dtype
                != layer.dtype_policy.variable_dtype):
            return None
        kernel = variables.get(id(layer.kernel))
        bias = variables.get(id(layer.bias)) if layer.use_bias else None
        if kernel is None or (layer.use_bias and bias is None):
            return None
        steps.append((kernel, bias, layer.activation))
    if len(steps) + sum(b is not None for _, b, _ in steps) != len(variables):
        return None
    return steps


def forward(steps, params, x):
    """Runs the planned Dense stack on stacked tasks.

    Args:
        steps: `plan(model)`.
        params: list of tensors in `model.trainable_variables` order; each
            either `[tasks, *shape]` (per task) or `shape` (shared).
        x: `[tasks, n, features]` inputs.

    Returns:
        `[tasks, n, units]` outputs.
    """
    for kernel_index, bias_index, activation in steps:
        kernel = params[kernel_index]
        if kernel.shape.rank == 3:
            x = tf.matmul(x, kernel)
        else:
            x = tf.tensordot(x, kernel, axes=1)
        if bias_index is not None:
            bias = params[bias_index]
            x = x + (bias[:, None, :] if bias.shape.rank == 2 else bias)
        x = activation(x)
    return x

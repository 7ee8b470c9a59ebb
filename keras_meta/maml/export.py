"""`MAML.export`: a TensorFlow SavedModel that adapts, with no keras_meta.

The SavedModel holds the meta-weights (the wrapped model's variables and
the inner rule's) and three serving signatures, each a graph of plain
TensorFlow ops, so `tf.saved_model.load` runs it in a process that has
TensorFlow only (TF Serving, another service):

- `adapt_and_predict(support_x, support_y, query_x)`: `eval_inner_steps`
  inner steps on the support set, then the query predictions
  (`serving.adapt_and_predict_fn`; the first signature, also
  `serving_default`);
- `predict(x)`: the wrapped model at the meta-weights (inference mode);
- `adapt_and_predict_batch(support_x, support_y, support_mask, query_x)`:
  many tasks at once, padded with a 0/1 mask
  (`serving.adapt_and_predict_batch_fn`).

Each signature returns `{"output_0": predictions}` and has fixed dtypes
and per-example shapes; other inputs fail with TensorFlow's signature
error.
"""

import keras
import tensorflow as tf

from keras_meta.maml import checks
from keras_meta.maml import serving

_FORMATS = ("tf_saved_model",)


def check_format(format, owner="MAML"):
    """Raises unless `format` is "tf_saved_model", the one format whose
    graphs can adapt."""
    if format not in _FORMATS:
        raise ValueError(
            f"{owner}.export writes format='tf_saved_model' (the format "
            f"whose graphs can adapt); got format={format!r}. For the "
            "model alone in another format, export the wrapped network "
            "(e.g. maml.model.export(path, format=...)).")


def input_spec(model, input_signature, owner="MAML"):
    """The `tf.TensorSpec` of a batch of `model`'s inputs
    ([None, *input_shape]), from `input_signature` or `model.inputs`;
    `owner` names the exporting class in errors."""
    if input_signature is None:
        inputs = getattr(model, "inputs", None)
        if not inputs:
            raise ValueError(
                f"{owner}.export: the wrapped model {model.name!r} has no "
                "known input shape (a subclassed model); pass "
                "input_signature=[tf.TensorSpec([None, *input_shape], "
                "dtype)].")
        if len(inputs) != 1:
            raise ValueError(
                f"{owner}.export supports models with one input; "
                f"{model.name!r} has {len(inputs)}.")
        spec = inputs[0]
    else:
        spec = input_signature
        if isinstance(spec, (list, tuple)):
            if len(spec) != 1:
                raise ValueError(
                    f"{owner}.export: input_signature must hold one spec "
                    f"(the model's input batch); got {len(spec)}.")
            spec = spec[0]
    shape = (None,) + tuple(spec.shape[1:])
    return tf.TensorSpec(shape, tf.as_dtype(keras.backend.standardize_dtype(
        spec.dtype)), name="x")


def target_spec(maml, x_spec, target_signature):
    """The `tf.TensorSpec` of a support set's targets: class indices
    (int32 [None]) for a sparse loss, else the model's output shape and
    dtype; `target_signature` overrides it."""
    if target_signature is not None:
        return tf.TensorSpec((None,) + tuple(target_signature.shape[1:]),
                             target_signature.dtype, name="support_y")
    if maml._loss_kind == "sparse":
        return tf.TensorSpec([None], tf.int32, name="support_y")
    out = maml.model.compute_output_spec(keras.KerasTensor(
        x_spec.shape, x_spec.dtype.name))
    return tf.TensorSpec((None,) + tuple(out.shape[1:]), out.dtype,
                         name="support_y")


def with_axis(spec, name):
    """`spec` with a leading task axis."""
    return tf.TensorSpec((None,) + tuple(spec.shape), spec.dtype, name=name)


def export_saved_model(maml, filepath, format="tf_saved_model",
                       verbose=None, input_signature=None, steps=None,
                       target_signature=None, jit_compile=None):
    """Writes `maml` as a SavedModel (see the module docstring).

    Args:
        maml: a compiled `MAML` (its loss is the inner loss).
        filepath: the SavedModel directory.
        format: "tf_saved_model" (the only format that can adapt).
        verbose: print the signatures (default True, as Keras does).
        input_signature: the model's input batch spec, `[spec]` or `spec`
            (default: the wrapped model's `inputs`).
        steps: inner steps of the adapting signatures (default
            `eval_inner_steps`).
        target_signature: the support targets' batch spec (default: int32
            class indices for a sparse loss, else the model's output).
        jit_compile: compile the adapting signatures with XLA (default:
            the model's `jit_compile`).

    Returns:
        The signatures' concrete functions, by name.
    """
    check_format(format)
    checks.require_compiled(maml, "export")
    steps = maml._eval_steps(steps)
    jit = bool(maml.jit_compile if jit_compile is None else jit_compile)
    x = input_spec(maml.model, input_signature)
    y = target_spec(maml, x, target_signature)
    fns = {
        "adapt_and_predict": (
            serving.adapt_and_predict_fn(maml, steps),
            [tf.TensorSpec(x.shape, x.dtype, name="support_x"), y,
             tf.TensorSpec(x.shape, x.dtype, name="query_x")]),
        "predict": (
            lambda x: maml.model(x, training=False), [x]),
        "adapt_and_predict_batch": (
            serving.adapt_and_predict_batch_fn(maml, steps),
            [with_axis(x, "support_x"), with_axis(y, "support_y"),
             tf.TensorSpec([None, None], keras.backend.floatx(),
                           name="support_mask"),
             with_axis(x, "query_x")]),
    }
    return save_signatures(fns, filepath, "MAML", verbose, jit)


def save_signatures(fns, filepath, owner, verbose, jit_compile=False):
    """Traces each `(fn, input signature)` of `fns` once and saves them as
    the SavedModel's signatures (the first also `serving_default`), with
    the variables they read; returns the concrete functions by name."""
    # Concrete functions, traced once each: `tf.saved_model.save` traces a
    # `tf.function` attached to the saved object again.
    concrete = {
        name: tf.function(fn, input_signature=signature, autograph=False,
                          jit_compile=jit_compile if name != "predict"
                          else None).get_concrete_function()
        for name, (fn, signature) in fns.items()}
    root = tf.Module()
    root.meta_variables = list({id(v): v for fn in concrete.values()
                                for v in fn.variables}.values())
    first = next(iter(concrete.values()))
    tf.saved_model.save(root, filepath, signatures=dict(
        concrete, serving_default=first))
    if verbose is None or verbose:
        print(f"Saved {owner} at '{filepath}'. Signatures (-> output_0):")
        for name, fn in concrete.items():
            print(f"  {name}(" + ", ".join(
                f"{spec.name}: {spec.dtype.name}{list(spec.shape)}"
                for spec in tf.nest.flatten(fn.structured_input_signature))
                + ")")
    return concrete


class Exportable:
    """Mixin of `MAML`: `export` writes the adapting SavedModel."""

    def export(self, filepath, format="tf_saved_model", verbose=None,
               input_signature=None, **kwargs):
        """Exports the meta-model as a SavedModel that adapts.

        Overrides `keras.Model.export` with the same call. The SavedModel
        has the signatures `adapt_and_predict` (support_x, support_y,
        query_x -> query predictions after `steps` inner steps, also
        `serving_default`), `predict` (x -> predictions at the
        meta-weights) and `adapt_and_predict_batch` (with a task axis and
        a 0/1 `support_mask` of real support rows); each returns
        `{"output_0": predictions}`. It loads with `tf.saved_model.load`
        where only TensorFlow is installed and gives `adapt_and_predict`'s
        numbers to float tolerance. Works for every variant and inner rule,
        and for a model loaded from a `.keras` file.

        Example:

        ```python
        maml.export("sinusoid_server")
        served = tf.saved_model.load("sinusoid_server")
        pred = served.signatures["adapt_and_predict"](
            support_x=sx, support_y=sy, query_x=qx)["output_0"]
        ```

        Args:
            filepath: the SavedModel directory.
            format: "tf_saved_model" only.
            verbose: print the signatures (default True).
            input_signature: the wrapped model's input batch spec,
                `[tf.TensorSpec([None, *input_shape], dtype)]` (default:
                the model's `inputs`; needed for a subclassed model).
            **kwargs: `steps` (inner steps; default `eval_inner_steps`),
                `target_signature` (the support targets' batch spec;
                default int32 class indices for a sparse loss, else the
                model's output), `jit_compile` (XLA for the adapting
                signatures; default the model's).
        """
        unknown = set(kwargs) - {"steps", "target_signature", "jit_compile"}
        if unknown:
            raise ValueError(
                f"MAML.export got unknown arguments {sorted(unknown)}; it "
                "takes steps, target_signature and jit_compile.")
        export_saved_model(self, filepath, format, verbose, input_signature,
                           **kwargs)

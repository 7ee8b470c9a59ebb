"""MAML.export: a SavedModel that adapts, for every variant and inner rule,
giving the in-process numbers in a process where keras_meta is not
importable; bad inputs fail with TensorFlow's signature error."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras
from tests.maml.test_variants_contract import episodes
from tests.maml.test_variants_contract import make

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# Runs where keras_meta cannot be imported: the repository is off sys.path
# and a finder refuses the name. Loads each SavedModel with TensorFlow and
# calls its signatures on the saved inputs.
SERVE = r"""
import importlib.abc, json, os, sys
root, inputs_path, out_path, dirs = sys.argv[1:5]

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "keras_meta":
            raise ImportError("keras_meta is hidden from this process")

sys.meta_path.insert(0, Hide())
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != root]
try:
    import keras_meta  # noqa: F401
    sys.exit("keras_meta is importable")
except ImportError:
    pass
import numpy as np
import tensorflow as tf
x = dict(np.load(inputs_path))
out = {}
for name, path in json.loads(dirs).items():
    sig = tf.saved_model.load(path).signatures
    out[name + "/adapt_and_predict"] = sig["adapt_and_predict"](
        support_x=x["sx"], support_y=x["sy"], query_x=x["qx"])["output_0"]
    out[name + "/predict"] = sig["predict"](x=x["qx"])["output_0"]
    out[name + "/batch"] = sig["adapt_and_predict_batch"](
        support_x=x["bsx"], support_y=x["bsy"], support_mask=x["mask"],
        query_x=x["bqx"])["output_0"]
np.savez(out_path, **{k: v.numpy() for k, v in out.items()})
"""


# Every variant class and every inner rule (the contract table's other
# rows repeat these inference paths: first order and the multi-step loss
# only change training).
EXPORTED = ("maml", "fomaml", "meta_sgd", "maml_plus_plus", "anil",
            "rule_lstm")


def inputs():
    """One task, and a batch of two: that task and its first 2 support
    rows, padded to 4 with the last real row."""
    rng = np.random.default_rng(0)
    sx = rng.uniform(-5, 5, (4, 1)).astype("float32")
    qx = rng.uniform(-5, 5, (6, 1)).astype("float32")
    sy = np.sin(sx)
    pad = lambda a: np.concatenate([a[:2], a[1:2], a[1:2]])  # noqa: E731
    return dict(sx=sx, sy=sy, qx=qx, bsx=np.stack([sx, pad(sx)]),
                bsy=np.stack([sy, pad(sy)]), bqx=np.stack([qx, qx]),
                mask=np.array([[1, 1, 1, 1], [1, 1, 0, 0]], "float32"))


def expected(maml, x):
    """The in-process numbers the signatures must give."""
    one = maml.adapt_and_predict(x["sx"], x["sy"], x["qx"]).numpy()
    two = maml.adapt_and_predict(x["sx"][:2], x["sy"][:2], x["qx"]).numpy()
    return {"adapt_and_predict": one, "batch": np.stack([one, two]),
            "predict": maml.model(x["qx"], training=False).numpy()}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The exported cases (XLA for "maml" only, to keep compiles few) and
    a trained, saved and reloaded model; the serving process's outputs."""
    tmp = tmp_path_factory.mktemp("export")
    x = inputs()
    dirs, wanted = {}, {}
    for case in EXPORTED:
        maml = make(case)
        if case != "maml":
            maml.compile(optimizer="adam", loss="mse", jit_compile=False)
        dirs[case] = str(tmp / case)
        maml.export(dirs[case], verbose=False)
        wanted[case] = expected(maml, x)
    maml = make("meta_sgd")
    maml.fit(episodes(), steps_per_epoch=1, verbose=0)
    maml.save(str(tmp / "trained.keras"))
    loaded = keras.models.load_model(str(tmp / "trained.keras"))
    dirs["loaded"] = str(tmp / "loaded")
    loaded.export(dirs["loaded"], verbose=False, jit_compile=False)
    wanted["loaded"] = expected(loaded, x)
    np.savez(tmp / "inputs.npz", **x)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", SERVE, ROOT, str(tmp / "inputs.npz"),
         str(tmp / "out.npz"), json.dumps(dirs)],
        cwd=str(tmp), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dirs, wanted, dict(np.load(tmp / "out.npz"))


@pytest.mark.slow
@pytest.mark.parametrize("case", EXPORTED + ("loaded",))
def test_saved_model_gives_in_process_numbers_without_keras_meta(
        served, case):
    _, wanted, got = served
    for key, value in wanted[case].items():
        np.testing.assert_allclose(got[f"{case}/{key}"], value, rtol=1e-5,
                                   atol=1e-6, err_msg=f"{case} {key}")


@pytest.mark.slow
def test_bad_inputs_fail_with_the_signature_error(served):
    sig = tf.saved_model.load(served[0]["maml"]).signatures
    x = inputs()
    with pytest.raises(TypeError, match="Can not cast TensorSpec"):
        sig["adapt_and_predict"](support_x=np.zeros((4, 2), "float32"),
                                 support_y=x["sy"], query_x=x["qx"])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="expected to be a float tensor"):
        sig["adapt_and_predict"](
            support_x=tf.constant(x["sx"], tf.float64),
            support_y=tf.constant(x["sy"]), query_x=tf.constant(x["qx"]))
    with pytest.raises(TypeError, match="could not convert string"):
        sig["adapt_and_predict"](support_x=np.array([["a"]]),
                                 support_y=x["sy"], query_x=x["qx"])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="expected to be a float tensor"):
        sig["predict"](x=tf.constant([[1]]))
    with pytest.raises(TypeError, match="missing a required argument"):
        sig["adapt_and_predict"](support_x=x["sx"], support_y=x["sy"])


def test_export_refuses_other_formats_and_arguments(tmp_path):
    maml = make("maml")
    with pytest.raises(ValueError, match="format='tf_saved_model'"):
        maml.export(str(tmp_path / "m"), format="onnx")
    with pytest.raises(ValueError, match="unknown arguments"):
        maml.export(str(tmp_path / "m"), inner_steps=3)

"""checkpoint_phis of examples/learned_optimizer/train.py: each checkpoint
of a run as a phi file."""

import numpy as np

from keras_meta.optimizers import weights_io

from examples.learned_optimizer import config as lopt_config
from examples.learned_optimizer import train as lopt_train


def test_checkpoint_phis_are_the_runs_phi(tmp_path):
    summary = lopt_train.run(lopt_config.Config(
        problems=("quadratic",), unroll=5, horizon=10, meta_steps=2,
        meta_lr=1e-2, model_dir=str(tmp_path),
        rule={"hidden_size": 4, "num_layers": 1}, eval_every=2,
        checkpoint_every=1, keep_checkpoints=5, verbose=0))
    paths = lopt_train.checkpoint_phis(str(tmp_path))
    assert [p.rsplit("/", 1)[-1] for p in paths] == [
        "phi-000000001.npz", "phi-000000002.npz"]
    first, cfg = weights_io.load_phi(paths[0])
    last, _ = weights_io.load_phi(paths[-1])
    final, final_cfg = weights_io.load_phi(summary["paths"]["last"])
    assert cfg == final_cfg
    for key in final:
        np.testing.assert_array_equal(last[key], final[key])
    # Meta-training moved phi between the two checkpoints.
    assert any(not np.array_equal(first[k], last[k]) for k in final)

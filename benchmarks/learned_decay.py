"""The strength of a normalized rule's learned weight decay.

The MLP of `NormalizedMLPRule` reads the parameter over its tensor's RMS,
`x = p / rms(p)`; with every other per-parameter feature at 0 its output
divided by `x` is the decay it adds to the direction (positive: the step
pulls `p` towards 0, in units of the rule's step size). This prints that
ratio for `x` in `--ratios` after each of `--steps` steps (the progress
features), for rules given as the suite's learned-optimizer specs
(`benchmarks/suite/runner.py`):

    python -m benchmarks.learned_decay --weights=normalized,runs/r21/pes_anti_1m_1000.npz,runs/r21/pes_anti_1m_1000.npz+parameter_feature_scale=0.2
"""

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

from benchmarks.suite import runner
from keras_meta.rules.normalized import rule as normalized_rule

FLAGS = flags.FLAGS


def define_flags():
    """The script's flags, defined only when it runs (`decay` is imported
    by tests beside other benchmarks with flags of the same names)."""
    flags.DEFINE_list("weights", ["normalized"],
                      "Learned-optimizer specs (name or file, +options).")
    flags.DEFINE_list("steps", ["100", "1000", "5000"], "Steps taken.")
    flags.DEFINE_list("ratios", ["0.5", "1", "2", "3"],
                      "Values of p / rms(p).")


def decay(phi, config, step, ratios):
    """The MLP's output over `p / rms(p)` for a kernel after `step` steps,
    every other per-parameter feature 0, at each of `ratios`."""
    x = tf.constant(ratios, tf.float32)
    features = [tf.zeros_like(x)] * (config.num_parameter_features - 1)
    tensor = normalized_rule.tensor_features(tf.constant(float(step)),
                                             False, config, tf.float32)
    out = normalized_rule.mlp_output(phi, features + [x], tensor, config)
    return (out / x).numpy()


def main(argv):
    del argv
    ratios = [float(r) for r in FLAGS.ratios]
    for spec in FLAGS.weights:
        optimizer = runner.make_optimizer(runner.learned_spec(spec))
        phi = {k: tf.convert_to_tensor(v) for k, v in optimizer.phi.items()}
        config = optimizer.rule_config
        if not config.parameter_feature:
            print(f"{spec}: no parameter feature, no learned decay")
            continue
        for step in FLAGS.steps:
            values = decay(phi, config, int(step), ratios)
            print(f"{spec} step {step}: " + " ".join(
                f"{r:g}:{v:.3f}" for r, v in zip(ratios, values))
                + f" (mean {np.mean(values):.3f})")


if __name__ == "__main__":
    define_flags()
    app.run(main)

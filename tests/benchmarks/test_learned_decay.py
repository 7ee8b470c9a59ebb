"""`benchmarks.learned_decay`: the strength of a normalized rule's learned
weight decay."""

import numpy as np
import tensorflow as tf

from benchmarks import learned_decay
from keras_meta.optimizers import weights_io
from keras_meta.rules import normalized


def _decay(phi, config, step=1000):
    phi = {k: tf.constant(v) for k, v in phi.items()}
    return learned_decay.decay(phi, config, step, [0.5, 1.0, 2.0])


def test_an_untrained_rule_has_no_decay_and_the_shipped_one_decays():
    config = normalized.NormalizedConfig(antisymmetric=True)
    untrained = normalized.init_meta_params(config, seed=0)
    np.testing.assert_array_equal(_decay(untrained, config), 0.0)
    phi, config = weights_io.resolve("normalized")
    shipped = _decay(phi, config)
    assert np.all((shipped > 0.01) & (shipped < 0.1)), shipped
    # Feeding the MLP a smaller parameter feature weakens the decay.
    weaker = _decay(normalized.scale_parameter_feature(phi, config, 0.2),
                    config)
    assert np.all(weaker < 0.5 * shipped), (weaker, shipped)

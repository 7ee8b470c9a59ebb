"""A meta-learned coordinatewise LSTM as MAML's inner update rule."""

import keras

from keras_meta import validation
from keras_meta.maml.inner_rules.base import InnerOptimizer
from keras_meta.rules import lstm


@keras.saving.register_keras_serializable(package="keras_meta")
class InnerLSTM(InnerOptimizer):
    """MAML's inner step computed by the LSTM rule of `LearnedOptimizer`.

    The update of every adapted coordinate comes from one small LSTM whose
    weights are shared by all coordinates while each coordinate keeps its
    own hidden state across the inner steps (the functional core
    `keras_meta.rules.lstm.LSTMRule`, `descent="sgd"`):

        update = -inner_learning_rate * exp(0.1 s) * (grad + 0.1 d)

    where `(d, s)` are the LSTM's two outputs for the coordinate, fed with
    the log-magnitude and sign of its gradient. The LSTM modulates the rate
    per coordinate and per step and adds its own direction, as the
    meta-learner LSTM of Ravi and Larochelle (2017) does; with a zero output
    layer it is plain SGD at `inner_learning_rate`, exactly. The LSTM
    weights are meta-learned together with the initialization (first or
    second order, with or without XLA); the LSTM state lives only inside
    one task's inner loop, so it is never saved. `MAML(inner_optimizer=
    "lstm")` builds this rule with its defaults.

    Example:

    ```python
    maml = keras_meta.MAML(
        net, inner_steps=5,
        inner_optimizer=keras_meta.maml.InnerLSTM(hidden_size=10))
    ```

    The default LSTM (one layer of 10 units) is smaller than
    `LearnedOptimizer`'s 2 x 20: the rule runs on every coordinate of every
    task at every inner step, inside the differentiated meta-step.

    Args:
        hidden_size: units per LSTM layer.
        num_layers: stacked LSTM layers.
        output_scale: scale of the LSTM's linear outputs.
        preprocess_p: the `p` of the log/sign gradient preprocessing.
        feature_gradients: differentiate the meta-loss through the LSTM's
            inputs (its view of the gradient) too. False (default) drops
            those second derivatives, as Ravi and Larochelle (2017) do:
            the meta-gradient still reaches the LSTM's weights and, through
            the nominal `grad` term, keeps MAML's second-order term. The
            derivative of the log-magnitude feature is `1 / |grad|`, which
            made the full second-order meta-gradient spiky.
        seed: seed of the initial LSTM weights.

    Reference:
        - [Ravi and Larochelle, 2017](https://openreview.net/forum?id=rJY0-Kcll),
          "Optimization as a model for few-shot learning".
        - [Andrychowicz et al., 2016](https://arxiv.org/abs/1606.04474)
    """

    def __init__(self, hidden_size=10, num_layers=1, output_scale=0.1,
                 preprocess_p=10.0, feature_gradients=False, seed=0):
        validation.check_positive_int("hidden_size", hidden_size)
        validation.check_positive_int("num_layers", num_layers)
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.output_scale = float(output_scale)
        self.preprocess_p = float(preprocess_p)
        self.feature_gradients = bool(feature_gradients)
        self.seed = seed
        self.rule_config = None
        self._rule = None
        self._keys = None

    def build(self, owner, adapted_variables, inner_steps, learning_rate):
        super().build(owner, adapted_variables, inner_steps, learning_rate)
        self.rule_config = lstm.RuleConfig(
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            preprocess_p=self.preprocess_p,
            descent="sgd",
            output_scale=self.output_scale,
            init_lr=self.learning_rate,
        )
        self._rule = lstm.LSTMRule(self.rule_config, self.feature_gradients)
        dtype = adapted_variables[0].dtype
        phi = lstm.init_phi(self.rule_config, seed=self.seed,
                            dtype=keras.backend.standardize_dtype(dtype))
        self._keys = sorted(phi)
        weights = []
        for key in self._keys:
            weight = owner.add_weight(
                shape=phi[key].shape,
                initializer="zeros",
                dtype=dtype,
                trainable=True,
                name="inner_lstm_" + key.replace("/", "_"),
            )
            weight.assign(phi[key])
            weights.append(weight)
        return weights

    def phi(self, weights):
        """The `rules.lstm` meta-parameter dict of the weights' values."""
        return dict(zip(self._keys, weights))

    def init(self, values):
        return self._rule.init(values)

    def update(self, meta_params, grads, state, values, step):
        return self._rule.update(self.phi(meta_params), grads, state, values,
                                 step)

    def get_config(self):
        return {
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "output_scale": self.output_scale,
            "preprocess_p": self.preprocess_p,
            "feature_gradients": self.feature_gradients,
            "seed": self.seed,
        }

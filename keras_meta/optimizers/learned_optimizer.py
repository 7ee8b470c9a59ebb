"""`LearnedOptimizer`: a meta-trained update rule as a Keras optimizer.

A thin Keras adapter over any rule of `rule_kinds` (an `UpdateRule` that
offers `init`, `update` and `state_shapes`: `rules.lstm.LSTMRule`,
`rules.normalized.NormalizedMLPRule`), picked by the weights' config:
phi are optimizer variables, the rule's per-tensor state lives in slots
shaped by `state_shapes`, and `update_step` calls the rule's `update` for
one variable, scales the update by `learning_rate` and applies it unless it
is not finite (`keras_meta.nonfinite`). A rule that compiles its own step
(the normalized MLP) runs step, check and writes as one XLA computation,
and a rule that `checks_inputs` is checked on its inputs instead of its
results (`variable_step.step_and_assign`).
"""

import os

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from keras.src.saving import serialization_lib

from keras_meta import saving
from keras_meta import validation
from keras_meta.optimizers import rule_kinds
from keras_meta.optimizers import variable_step
from keras_meta.optimizers import weight_average
from keras_meta.optimizers import weights_io
from keras_meta.rules import lstm
from keras_meta.rules import normalized


def _tf_variable(variable):
    """The `tf.Variable` behind a Keras variable (itself otherwise)."""
    return variable.value if isinstance(variable, keras.Variable) \
        else variable


def _prefix(variable):
    """A model variable's path as a prefix of its optimizer variables'
    names."""
    if hasattr(variable, "path"):
        return variable.path.replace("/", "_")
    return str(variable.name).replace("/", "_").replace(":", "_")


@keras.saving.register_keras_serializable(package="keras_meta")
class LearnedOptimizer(keras.optimizers.Optimizer):
    """Optimizer whose update rule is meta-trained (an MLP, or an LSTM).

    The default is the normalized MLP rule (`keras_meta.rules.normalized`,
    `weights="normalized"`): a small MLP, shared by every parameter, reads
    scale-free Adam-like features of each parameter (the gradient and
    momenta at three decays over Adam's `sqrt(v_hat)`, the parameter over
    its tensor's RMS, training-progress features) and adds its output to
    Adam's direction, scaled by a bounded step size that follows a learned
    schedule. It was meta-trained by persistent evolution strategies for
    the validation loss of small tasks, so it needs no tuning, and
    `LearnedOptimizer()` is
    `LearnedOptimizer(weights="normalized", use_ema=True, compact_ema=True,
    rule={"dense_table_decay": False})`: `fit` ends on the average of the
    weights (`use_ema`, kept in half a float per parameter), and an
    embedding table whose sparse gradient
    touches every row gets no learned decay (`NormalizedConfig`). Steered
    by validation loss (`keras_meta.callbacks.ValidationControl`) it holds
    up on held-out models better than alone, best with
    `rule={"factored_second_moment": True}` (Adafactor's second moment, one
    float per parameter less; `"bfloat16_momenta": True` saves another, the
    fast momenta kept in bfloat16). phi (the rule's weights) are
    optimizer variables: they are saved in `.keras` files with the rule's
    state and are never changed by `fit`.

    `weights="per_tensor"` (the default before 0.4.0) runs one small LSTM
    step per variable and steers Adam's log step size for that variable,
    which also follows a hypergradient (the gradient's cosine with the
    average of about the last 100 Adam directions, within 10x below and
    100x above a meta-learned base rate): lower training loss, but it
    follows training loss into overfitting. `weights="coordinatewise"` is
    the paper's form, the LSTM on every coordinate (tens of times Adam's
    step time and memory on large models). `weights="init_normalized"` is
    the normalized rule untrained: Adam's direction normalized per tensor
    at step size 1e-3.

    `weight_decay` with the normalized rule is decoupled weight decay in
    AdamW's meaning, scaled by the rule's actual step: each step does
    `p <- p - learning_rate * lr_t * (d + weight_decay * p)`, `lr_t` the
    rule's step size for that tensor and step, `d` its normalized direction
    (so `weight_decay=0.01` means what it means in `AdamW`). With the LSTM
    rules it is Keras's generic decay, `p <- p - learning_rate *
    weight_decay * p` before the step. `exclude_from_weight_decay` applies
    to both.

    A gradient or update that is not finite never reaches the weights: the
    step is skipped for that variable (its state is left unchanged too),
    `nonfinite_count` is incremented, and a warning is printed at the first
    skip (outside XLA) and at the end of each `fit` that skipped any.

    Args:
        learning_rate: A float, a
            `keras.optimizers.schedules.LearningRateSchedule` instance, or a
            callable that takes no arguments. A multiplier on the learned
            update; the learned rule sets its own step size, so the default
            `1.0` uses it unchanged.
        weights: `None` (default) for the shipped default above; the name
            of shipped weights (`"normalized"`, `"per_tensor"`,
            `"per_tensor_one_step"`: the same LSTM with a one-step
            hypergradient;
            `"coordinatewise"`, or `"quadratic"`: a coordinatewise LSTM
            that modulates heavy-ball momentum at a rate set by a secant
            estimate of the curvature, meta-trained on the paper's
            quadratics only, for deterministic (full-batch) problems whose
            conditioning dominates; see `weights_io.PRETRAINED`); a path to an
            `.npz` file written by `keras_meta.optimizers.weights_io.save_phi`
            or `examples/train_learned_optimizer.py`; a dict of arrays
            (`{name: array}` matching `rules.lstm.phi_shapes(rule)`, then
            `rule` is required); `"init"` for an untrained rule drawn with
            `seed` (for meta-training and tests; the LSTM unless `rule`
            names another kind); or `"init_normalized"` for the untrained
            normalized MLP rule.
        rule: Optional config dict of the rule (`optimizers.rule_kinds`:
            the fields of `rules.lstm.RuleConfig`, or of another kind's
            config with its `"rule_type"`, e.g. `"normalized_mlp"`). Taken
            from the weights file when `weights` is a name, a path or
            `None`; given with a name or a path, it is read over the
            file's config and may change only fields the file was not
            trained for (e.g. `weights="normalized",
            rule={"dense_table_decay": False}`); with `None` it names a
            shipped file's config up to such fields, or changes those
            fields of the default's rule (e.g.
            `rule={"factored_second_moment": True}`).
        seed: Seed of the random phi of an untrained rule.
        use_ema: None (default): True for the default weights
            (`weights=None`, `rule` None or a variant of the default's
            rule), else False, Keras's default; a bool as in any Keras
            optimizer.
        compact_ema: keep the weight average as its bfloat16 offset from
            the weights (`optimizers.weight_average`): half a float per
            parameter instead of one, the same training steps, the average
            within a fraction of its recent drift (False without
            `use_ema`). None (default): True where `use_ema` is None and
            made True by the default weights; False in files saved before
            the option.
        ema_window_fraction: None (default): the weight average keeps its
            window of `1 / (1 - ema_momentum)` steps. A fraction in (0, 1]
            (with `use_ema`): the window grows to that fraction of the
            steps taken once it is smaller (`weight_average.GrowingMomentum`).
        {{base_optimizer_keyword_args}}

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer=keras_meta.LearnedOptimizer(), loss="mse")
    >>> x = np.random.rand(64, 4); y = x.sum(axis=1, keepdims=True)
    >>> history = model.fit(x, y, epochs=2, verbose=0)

    Reference:
        - [Andrychowicz et al., 2016](https://arxiv.org/abs/1606.04474),
          "Learning to learn by gradient descent by gradient descent".
        - [Baydin et al., 2018](https://arxiv.org/abs/1703.04782),
          "Online learning rate adaptation with hypergradient descent".
        - [Malitsky and Mishchenko, 2020](https://arxiv.org/abs/1910.09529),
          "Adaptive gradient descent without descent" (the secant curvature
          of `weights="quadratic"`).
    """

    def __init__(
        self,
        learning_rate=1.0,
        weights=None,
        rule=None,
        seed=0,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=None,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        compact_ema=None,
        ema_window_fraction=None,
        name=None,
        **kwargs,
    ):
        if isinstance(learning_rate, (int, float)):  # else a schedule
            validation.check_non_negative_float("learning_rate", learning_rate)
        phi_values, rule_config = weights_io.resolve(weights, rule, seed)
        if use_ema is None:
            use_ema = weights is None and weights_io.is_default_rule(
                rule_config)
            if compact_ema is None:  # the default's average is compact
                compact_ema = use_ema
        super().__init__(
            learning_rate=learning_rate,
            name=name,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            **kwargs,
        )
        self.weights, self.seed = weights, seed
        self.rule = dict(rule) if rule is not None else None
        self._rule_config = rule_config
        self._decays_in_rule = rule_kinds.decays_in_rule(self._rule_config)
        self.compact_ema = weight_average.check_compact(
            compact_ema, self._decays_in_rule or not weight_decay, use_ema)
        self.ema_window_fraction = weight_average.check_window_fraction(
            ema_window_fraction, use_ema)
        decay = (weight_decay or 0.0) if self._decays_in_rule else 0.0
        self._rule = rule_kinds.make_rule(self._rule_config, decay)
        # The same rule without decay, for excluded variables.
        self._rule_no_decay = rule_kinds.make_rule(self._rule_config)
        self._phi = self._phi_variables(phi_values)
        self._fused_steps, self._averaged_in_step = {}, set()
        self._in_step = None  # phi and results of the step being traced
        self._nonfinite_count = self.add_variable(
            shape=(), initializer="zeros", dtype="int64",
            name="nonfinite_count")

    def _phi_variables(self, phi_values):
        """phi as optimizer variables, in sorted order of their names."""
        phi = {}
        for key in sorted(phi_values):
            var = self.add_variable(
                shape=phi_values[key].shape,
                initializer="zeros",
                dtype="float32",
                name="phi_" + key.replace("/", "_"),
            )
            var.assign(phi_values[key])
            phi[key] = var
        return phi

    @property
    def rule_config(self):
        """The rule config of this optimizer's phi (`rules.lstm.RuleConfig`
        or `rules.normalized.NormalizedConfig`)."""
        return self._rule_config

    @property
    def phi(self):
        """Dict of the meta-parameter variables (name -> variable)."""
        return dict(self._phi)

    @property
    def has_learned_decay(self):
        """Whether the rule decays weights by its own learned amount (a
        normalized rule reading the parameter feature `p / rms(p)`)."""
        return bool(getattr(self._rule_config, "parameter_feature", False))

    def scale_learned_decay(self, factor):
        """Multiplies the rule's learned weight decay by `factor` (>= 0):
        its parameter feature's weights in phi
        (`rules.normalized.scale_parameter_feature`), so the change is
        saved with the optimizer. `keras_meta.callbacks.ValidationControl`
        lowers it when a model is held back rather than overfitting.

        Raises:
            ValueError: the rule has no learned decay, or `factor` is not
                a number >= 0.
        """
        if not self.has_learned_decay:
            raise ValueError(
                "scale_learned_decay() needs a rule with a learned weight "
                "decay (a normalized rule with its parameter feature, e.g. "
                f"weights='normalized'); this one is {self._rule_config}.")
        phi = {"mlp0/kernel": ops.convert_to_tensor(self._phi["mlp0/kernel"])}
        scaled = normalized.scale_parameter_feature(phi, self._rule_config,
                                                    factor)
        self._phi["mlp0/kernel"].assign(scaled["mlp0/kernel"])

    @property
    def nonfinite_count(self):
        """Number of per-variable steps skipped for non-finite values."""
        return self._nonfinite_count

    @property
    def consecutive_nonfinite_steps(self):
        """Steps in a row, up to the last one, that skipped some variable.

        A runtime count (not saved): `keras_meta.callbacks.NonFiniteGuard`
        stops training when it grows too large.
        """
        if not self.built:
            return 0
        last = int(self._last_nonfinite_step.numpy())
        if last < int(self.iterations.numpy()) - 1:
            return 0
        return int(self._consecutive_nonfinite.numpy())

    def step_sizes(self):
        """Current per-variable step sizes of a per-tensor rule.

        Returns:
            dict `{variable path: step size}`. Per-tensor LSTM rule:
            `learning_rate * exp(log_lr + offset)` of each variable, the
            rate that scales Adam's direction in its next step (before the
            LSTM's one-step output `o_1`); before the first step every
            variable has `learning_rate * exp(log_lr)`. Normalized rule:
            `learning_rate` times the rule's step size for the variable's
            next step (the RMS of the step, without weight decay).

        Raises:
            ValueError: for a coordinatewise rule (its step sizes are per
                coordinate), or if the optimizer is not built yet.
        """
        multiplier = float(ops.convert_to_numpy(self.learning_rate))
        if self._decays_in_rule and self.built:
            phi = {k: ops.convert_to_tensor(v) for k, v in self._phi.items()}
            states = [{key: ops.convert_to_tensor(self._slots[key][i])
                       for key in self._state_keys}
                      for i in range(len(self._trainable_variables))]
            sizes = self._rule.step_sizes(phi, states,
                                          self._trainable_variables)
        else:
            rule_kinds.check_per_tensor(self._rule_config, self.built)
            sizes = [np.exp(self._phi["log_lr"].numpy() + offset.numpy())
                     for offset in self._slots["log_lr"]]
        return {var.path: multiplier * float(size)
                for var, size in zip(self._trainable_variables, sizes)}

    def build(self, var_list):
        """Creates the per-variable state slots (for a variable of shape
        `S`, the rule's `state_shapes(S)`) and weight averages."""
        if self.built:
            return
        self.use_ema = self.use_ema and not self.compact_ema
        super().build(var_list)  # Keras's averages unless compact
        self.use_ema = self.use_ema or self.compact_ema
        if self.compact_ema:
            self._model_variables_moving_average = weight_average.add_offsets(
                self, var_list, [_prefix(var) for var in var_list])
        self._last_nonfinite_step = saving.unsaved_counter(
            -2, tf.int64, "last_nonfinite_step")
        self._consecutive_nonfinite = saving.unsaved_counter(
            0, tf.int64, "consecutive_nonfinite")
        self._reported_skips = 0  # by finalize_variable_values
        self._state_keys = tuple(self._rule.state_shapes(()))
        # What the non-finite check reads besides the update.
        self._checked_keys = (("m", "v") if isinstance(self._rule,
                                                     lstm.LSTMRule)
                              else self._state_keys)
        tag = "lstm" if isinstance(self._rule, lstm.LSTMRule) else "rule"
        self._slots = {k: [] for k in self._state_keys}
        for var in var_list:
            shapes = self._rule.state_shapes(var.shape)
            dtypes = self._rule.storage_dtypes(var.dtype)
            prefix = _prefix(var)
            for key in self._state_keys:
                self._slots[key].append(self.add_variable(
                    shape=shapes[key], initializer="zeros",
                    dtype=dtypes.get(key, var.dtype),
                    name=f"{prefix}_{tag}_{key}"))

    def update_step(self, gradient, variable, learning_rate):
        """Update step given gradient and the associated model variable."""
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        lr = ops.cast(learning_rate, dtype)
        in_step = self._in_step  # read once per step (_backend_update_step)
        phi = in_step["phi"] if in_step else self._read_phi()
        rule = self._rule
        if self._decays_in_rule and not self._use_weight_decay(variable):
            rule = self._rule_no_decay
        row_mask = None
        if isinstance(gradient, tf.IndexedSlices):
            rows = variable_step.table_rows(gradient, variable)
            phi, row_mask = rule.table_step(phi, gradient.indices, rows)
        gradient = ops.cast(variable_step.dense_gradient(gradient, variable),
                            dtype)
        slots = [_tf_variable(self._slots[key][index])
                 for key in self._state_keys]
        step_function = self._step_function(rule, variable)
        average = {}
        fused = step_function.ema_momentum is not None
        if fused or step_function.compact:
            if fused:
                self._averaged_in_step.add(index)
            average["average"] = _tf_variable(
                self._model_variables_moving_average[index])
        ok = step_function(
            phi, gradient, _tf_variable(variable), slots, lr,
            tf.convert_to_tensor(_tf_variable(self.iterations)), row_mask,
            **average)
        if in_step:
            in_step["applied"].append((ok, variable.name))
        else:
            self._record_skips([(ok, variable.name)])

    def _read_phi(self):
        return {k: tf.convert_to_tensor(_tf_variable(v))
                for k, v in self._phi.items()}

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Outside a strategy (whose replicas step apart), phi is read and
        # skipped updates are counted once per step, not per variable.
        if tf.distribute.has_strategy():
            return super()._backend_update_step(grads, trainable_variables,
                                                learning_rate)
        self._in_step = {"phi": self._read_phi(), "applied": []}
        try:
            super()._backend_update_step(grads, trainable_variables,
                                         learning_rate)
            applied = self._in_step["applied"]
        finally:
            self._in_step = None
        self._record_skips(applied)

    def _record_skips(self, applied):  # (ok, variable name) pairs
        if applied:
            variable_step.record_skips(
                applied, self._nonfinite_count, self.iterations,
                self._last_nonfinite_step, self._consecutive_nonfinite)

    def _step_function(self, rule, variable):
        """`variable_step.step_and_assign` for `rule`, compiled with XLA
        (`variable_step.compiled_step`) for a rule that compiles its own
        step, where the variable is a plain local one; else the rule's own
        ops."""
        if not (getattr(rule, "jit_compile", False)
                and isinstance(variable, tf.Variable)
                and not tf.distribute.has_strategy()):
            return variable_step.plain_step(
                rule, self._state_keys, self._checked_keys, self.compact_ema)
        size = variable.shape.num_elements() or 0
        split = (variable_step.can_split(rule)
                 and size >= variable_step.SPLIT_MIN_SIZE)
        # Keras averages every step, also those that only accumulate.
        average = self.use_ema and not self.gradient_accumulation_steps
        key = (id(rule), split)
        if key not in self._fused_steps:
            self._fused_steps[key] = variable_step.compiled_step(
                rule, self._state_keys, self._checked_keys, split,
                weight_average.momentum_of(self) if average else None,
                self.compact_ema)
        return self._fused_steps[key]

    def _update_model_variables_moving_average(self, trainable_variables):
        # Averages that a compiled step updated (`update_step`) are skipped.
        done, self._averaged_in_step = self._averaged_in_step, set()
        weight_average.update_averages(self, trainable_variables, done)

    def _overwrite_model_variables_with_average_value(self, variables):
        if not self.compact_ema:
            return super()._overwrite_model_variables_with_average_value(
                variables)
        weight_average.overwrite_with_average(self, variables)

    def finalize_variable_values(self, var_list):
        # The end of `fit`: report the skips a compiled step could not.
        super().finalize_variable_values(var_list)
        self._reported_skips = variable_step.report_skips(
            self._nonfinite_count, self._reported_skips)

    def _apply_weight_decay(self, variables):
        # A rule that decays by its own step size does it in update_step.
        if not self._decays_in_rule:
            super()._apply_weight_decay(variables)

    def get_config(self):
        config = super().get_config()
        weights = self.weights
        if isinstance(weights, os.PathLike):
            weights = os.fspath(weights)
        if isinstance(weights, dict):
            # The values are restored from the saved optimizer variables.
            weights = "init"
        config.update(weights=weights, seed=self.seed,
                      rule=rule_kinds.config_to_dict(self._rule_config),
                      compact_ema=self.compact_ema,
                      ema_window_fraction=self.ema_window_fraction)
        return saving.stamp(config)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config.setdefault("compact_ema", False)  # saved before the option
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = serialization_lib.deserialize_keras_object(
                config["learning_rate"], custom_objects=custom_objects)
        return saving.build(cls, config)


if LearnedOptimizer.__doc__ is not None:
    LearnedOptimizer.__doc__ = LearnedOptimizer.__doc__.replace(
        "{{base_optimizer_keyword_args}}",
        keras.src.optimizers.optimizer.base_optimizer_keyword_args,
    )

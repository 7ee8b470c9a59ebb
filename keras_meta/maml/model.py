"""MAML as a `keras.Model`: meta-learn an initialization that adapts fast.

The model holds the state and the Keras entry points (init, compile, the
train and test steps, call, config); each idea lives in a module of its
own beside it: `tasks` (one task's inner loop and query pass),
`task_parallel` (how tasks run), `meta_gradients`, `multi_step_loss`,
`skipping` (non-finite steps), `losses_and_metrics`, `checks`,
`batch_norm`, `adaptation`, `fused_xla` and `seed_states`.
"""

import keras
import tensorflow as tf
from keras.src.saving import serialization_lib

from keras_meta import callbacks as km_callbacks
from keras_meta import distribute as km_distribute
from keras_meta import saving
from keras_meta import validation
from keras_meta.maml import batch_norm
from keras_meta.maml import batched_dense
from keras_meta.maml import checks
from keras_meta.maml import meta_gradients
from keras_meta.maml import multi_step_loss as multi_step_losses
from keras_meta.maml import skipping
from keras_meta.maml import task_parallel
from keras_meta.maml.adaptation import Adaptation
from keras_meta.maml.export import Exportable
from keras_meta.maml.fused_xla import FusedTrainer
from keras_meta.maml.losses_and_metrics import QueryMetrics
from keras_meta.maml.losses_and_metrics import resolve_loss
from keras_meta.maml.seed_states import SeedStates
from keras_meta.maml.serving import Serving
from keras_meta.maml.settings import Settings
from keras_meta.maml import inner_rules as inner_optimizers

# Files written before `inner_optimizer` existed name the rule by its rates.
_RULE_OF_RATES = {"per_parameter": "meta_sgd", "per_step": "lslr"}


@keras.saving.register_keras_serializable(package="keras_meta")
class MAML(Settings, QueryMetrics, Adaptation, Serving, Exportable,
           FusedTrainer, SeedStates, keras.Model):
    """Model-Agnostic Meta-Learning around any built Keras model.

    MAML learns initial weights from which a few gradient steps on a task's
    support set give a model that does well on that task's query set. Each
    `train_step` adapts fast weights per task with nested `tf.GradientTape`s
    through `model.stateless_call` (no variable is assigned in the inner
    loop), measures the adapted model on the query set, and applies the
    meta-gradient of the mean query loss with the compiled optimizer.

    The variants are arguments of this one class (and small subclasses that
    set them): `first_order=True` is FOMAML; `inner_optimizer="meta_sgd"`
    is Meta-SGD (`keras_meta.MetaSGD`); `inner_optimizer="lslr"` with
    `multi_step_loss=True` is MAML++ (`keras_meta.MAMLPlusPlus`);
    `adapted_layers=[...]` adapts only those layers (ANIL,
    `keras_meta.ANIL`); `inner_optimizer="lstm"` replaces the inner SGD step
    by a meta-learned coordinatewise LSTM (Ravi and Larochelle, 2017). The
    inner update rule is swappable like the model (`inner_optimizer`).

    Data: episode dicts with a task axis (see `keras_meta.data.episode`).
    `fit` meta-trains; `evaluate` reports the query loss and metrics before
    (`pre_adapt_*`) and after (`post_adapt_*`) `eval_inner_steps` steps;
    `predict` on episodes returns post-adaptation query predictions and on
    plain inputs the meta-model's predictions; `adapt` returns a plain
    `keras.Model` adapted to one task; `adapt_and_predict` (one task) and
    `adapt_and_predict_batch` (many) adapt and predict in one compiled
    call; `export` writes a SavedModel that adapts (`maml.export`).

    Batch normalization: during meta-training every pass uses the
    statistics of the batch at hand, as the reference implementation does,
    and the layers' moving statistics are updated with the mean over tasks
    of the query passes' statistics. With `transductive=True` (default),
    evaluation, prediction and `adapt` do the same (query predictions use
    the query batch's statistics); with `transductive=False` they run the
    model in inference mode (moving statistics, no dropout). A model
    returned by `adapt` is a plain Keras model: `predict` uses moving
    statistics, `adapted(x, training=True)` the batch's.

    Example:

    ```python
    net = keras.Sequential([
        keras.Input((1,)),
        keras.layers.Dense(40, activation="relu"),
        keras.layers.Dense(40, activation="relu"),
        keras.layers.Dense(1),
    ])
    maml = keras_meta.MAML(net, inner_learning_rate=0.01, inner_steps=1)
    maml.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    maml.fit(keras_meta.data.sinusoid(shots=10), steps_per_epoch=1000)
    adapted = maml.adapt(support_x, support_y, steps=10)
    adapted.predict(query_x)
    ```

    Args:
        model: a built Keras model (functional, Sequential or subclassed)
            with trainable variables.
        inner_learning_rate: float, the inner SGD rate (initial value when
            the rates are learned).
        inner_steps: int >= 1, inner steps during meta-training.
        first_order: bool, drop second derivatives (FOMAML).
        eval_inner_steps: int >= 1, inner steps in `evaluate`, `predict`
            and `adapt`; defaults to `inner_steps`.
        inner_optimizer: the inner update rule: "sgd" (default; plain SGD
            at `inner_learning_rate`), "meta_sgd" (a learned rate per
            parameter), "lslr" (a learned rate per adapted variable per
            step), "lstm" (the coordinatewise LSTM rule of
            `LearnedOptimizer`, `keras_meta.maml.InnerLSTM`) or a
            `keras_meta.maml.InnerOptimizer`. The rule's parameters are
            meta-learned with the initialization.
        multi_step_loss: the meta-loss over inner steps. False: the query
            loss after the last step. True: a weighted sum of the query
            losses after every step (MAML++), annealed towards the last
            step over `multi_step_loss_anneal_steps` meta-steps. "uniform":
            their mean, never annealed, which trains every step count up
            to `inner_steps` (for learned inner rules that must hold at
            more steps than one); or a list of `inner_steps` weights, a
            distribution over step counts (`keras_meta.maml.multi_step_loss`).
        multi_step_loss_anneal_steps: int >= 1.
        adapted_layers: None to adapt every trainable variable, or a list
            of layer names whose variables adapt (others stay at their
            meta-learned values in the inner loop, as in ANIL).
        transductive: bool, use batch statistics at evaluation (above).
        task_parallelism: "auto", "batched" (all tasks' weights stacked on
            a leading axis and every layer run once for all tasks; only for
            a `keras.Sequential` of plain Dense layers and an elementwise
            inner rule), "vectorized" (`tf.vectorized_map` over tasks) or
            "sequential" (a `tf.while_loop` over tasks, one compiled loop
            body; in training each task's meta-gradient is taken inside
            the body and summed, which compiles faster and uses less memory
            than differentiating the loop from outside). "auto" picks
            "batched" under XLA where it applies (the built-in SGD rules),
            else "sequential" under XLA and for convolutional models,
            "vectorized" otherwise (see `keras_meta.maml.task_parallel`).
        track_pre_adaptation: int >= 1 or bool: how often `fit` also runs
            each task's query set through the meta-weights to log
            `pre_adapt_*`. That pass only feeds the logs and costs a
            forward pass of every query set. An int N runs it on every N-th
            meta-step and on the first step of each epoch, so the epoch's
            `pre_adapt_*` are means over those steps (default 10); True
            runs it on every step, False never (no `pre_adapt_*` training
            logs). Training is the same either way; `evaluate` always
            reports them.
        zeroed_layers: None (default), True (the head: the last layer
            with trainable weights) or layer names whose variables start
            at zero and get no meta-gradient, so every task adapts them
            from zero (the zeroing trick); they must adapt.
        inner_guard: None (default) or a float `f > 0`: per task, an inner
            step after which the support loss is not finite or above `f`
            times the loss before adaptation is undone, and that task
            keeps its last accepted weights for the remaining steps
            (`keras_meta.rules.inner_loop.unroll`'s `guard`); in training,
            evaluation, `adapt`, serving and `export`. Costs one forward
            pass of the support set per step. A stopped task's
            `inner_update_norms` are 0 from the undone step on.
        max_consecutive_skips: int >= 1 or None. A meta-step whose losses
            or meta-gradients are not finite is skipped (weights untouched)
            and counted in `skipped_steps`; `fit` stops with a
            `keras_meta.errors.NonFiniteError` naming the step and the
            quantity after this many skipped steps in a row (None: never).
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Reference:
        - [Finn et al., 2017](https://arxiv.org/abs/1703.03400)
        - [Li et al., 2017 (Meta-SGD)](https://arxiv.org/abs/1707.09835)
        - [Antoniou et al., 2019 (MAML++)](https://arxiv.org/abs/1810.09502)
        - [Raghu et al., 2020 (ANIL)](https://arxiv.org/abs/1909.09157)
        - [Kao et al., 2022 (the zeroing trick)](
          https://arxiv.org/abs/2106.15367)
    """

    # MAML++'s per-step batch norm (`batch_norm.StepBatchNorm`), if any.
    _step_batch_norm = None
    # ProtoMAML's start from the prototypes (`tasks.start_params`), if any.
    _start = None

    def __init__(
        self,
        model,
        inner_learning_rate=0.01,
        inner_steps=1,
        first_order=False,
        eval_inner_steps=None,
        inner_optimizer="sgd",
        multi_step_loss=False,
        multi_step_loss_anneal_steps=1000,
        adapted_layers=None,
        transductive=True,
        task_parallelism="auto",
        max_consecutive_skips=20,
        track_pre_adaptation=10,
        inner_guard=None,
        zeroed_layers=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        checks.check_model(model)
        checks.check_arguments(
            inner_learning_rate, inner_steps, eval_inner_steps,
            multi_step_loss_anneal_steps, max_consecutive_skips,
            task_parallelism, task_parallel.TASK_PARALLELISM)
        self.model = model
        self.inner_learning_rate = float(inner_learning_rate)
        self.inner_steps = inner_steps
        self.first_order = bool(first_order)
        self.eval_inner_steps = eval_inner_steps
        self.inner_optimizer = inner_optimizers.get(inner_optimizer or "sgd")
        self.multi_step_loss = multi_step_losses.resolve(multi_step_loss,
                                                         inner_steps)
        self.multi_step_loss_anneal_steps = multi_step_loss_anneal_steps
        self.adapted_layers = (
            None if adapted_layers is None else list(adapted_layers))
        self.transductive = bool(transductive)
        self.task_parallelism = task_parallelism
        self.max_consecutive_skips = max_consecutive_skips
        self.inner_guard = checks.inner_guard(inner_guard)
        self._pre_adaptation_interval = checks.pre_adaptation_interval(
            track_pre_adaptation)
        # A plain bool or int (not e.g. numpy's), so the config is JSON.
        self.track_pre_adaptation = (
            track_pre_adaptation if isinstance(track_pre_adaptation, bool)
            else self._pre_adaptation_interval)
        self._adapted_indices = checks.adapted_indices(model,
                                                       self.adapted_layers)
        self.zeroed_layers, self._zeroed_indices = checks.zero_layers(
            model, zeroed_layers, self._adapted_indices, self.adapted_layers)
        self._dense_plan = batched_dense.plan(model)
        if task_parallelism == "batched" and self._dense_plan is None:
            raise ValueError(
                "task_parallelism='batched' needs a keras.Sequential of plain "
                "Dense layers (no regularizers, non-trainable variables or "
                f"other layers); {model.name!r} is not one. Use 'auto'.")
        self._build_state()

    def _build_state(self):
        """Creates the inner rule's weights and the skip counters, in the
        order saved files hold them."""
        self.inner_optimizer_variables = self.inner_optimizer.build(
            self, self.adapted_variables, self.inner_steps,
            self.inner_learning_rate)
        self.skipped_steps = self.add_weight(
            shape=(), dtype="int64", initializer="zeros", trainable=False,
            name="skipped_steps")
        # `nonfinite_quantity` indexes errors.NONFINITE_QUANTITIES.
        self.consecutive_skipped_steps = saving.unsaved_counter(
            0, tf.int64, "consecutive_skipped_steps")
        self.nonfinite_quantity = saving.unsaved_counter(
            0, tf.int32, "nonfinite_quantity")
        self.built = True

    # ------------------------------------------------------------ variables

    def _meta_variables(self):
        """What the outer optimizer updates, in the order it is built with:
        the wrapped model's trainable variables, then the inner rule's."""
        return list(self.model.trainable_variables) + list(
            self.inner_optimizer_variables) + self._step_variables(True)

    def _state_variables(self):
        """The non-trainable variables the forward passes read and update:
        the wrapped model's, then MAML++'s per-step statistics."""
        return list(self.model.non_trainable_variables) + (
            self._step_variables(False))

    def _step_variables(self, trainable):
        plan = self._step_batch_norm
        if plan is None:
            return []
        return list(plan.weights if trainable else plan.statistics)

    def _second_order(self):
        """Whether this meta-step keeps second derivatives: a Python bool,
        or a scalar bool tensor (MAML++'s derivative-order annealing)."""
        return not self.first_order

    @property
    def inner_rate_variables(self):
        """The learned inner rates (empty unless the rule learns rates)."""
        if self.inner_optimizer.learned_rates is None:
            return []
        return list(self.inner_optimizer_variables)

    @property
    def adapted_variables(self):
        """The wrapped model's variables that the inner loop adapts."""
        variables = self.model.trainable_variables
        return [variables[i] for i in self._adapted_indices]

    # -------------------------------------------------------------- compile

    def compile(self, optimizer="adam", loss="mse", metrics=None,
                run_eagerly=False, steps_per_execution=1, jit_compile="auto",
                **kwargs):
        """Configures meta-training.

        Args:
            optimizer: the outer (meta) optimizer.
            loss: the task loss, used in the inner loop and on the query set;
                any Keras loss identifier.
            metrics: Keras metrics, computed on the query set before
                (`pre_adapt_<name>`) and after (`post_adapt_<name>`)
                adaptation. 'accuracy' picks the accuracy that matches the
                loss.
            run_eagerly, steps_per_execution, jit_compile: as in
                `keras.Model.compile`; `jit_compile=True` compiles the steps
                with XLA. "auto" (default): XLA on GPU and TPU
                (`keras_meta.backend.default_jit_compile()`); on CPU only
                for a plain Dense stack with an SGD inner rule, which XLA
                runs as one batched program (`task_parallelism`).
            **kwargs: other `keras.Model.compile` arguments.
        """
        self._loss_fn, loss_name = resolve_loss(loss)
        self._loss_kind = checks.loss_kind(loss_name)
        metrics = list(metrics or [])
        self._build_metrics(loss_name, metrics, self._eval_steps(None))
        if jit_compile == "auto" and not run_eagerly:
            jit_compile = task_parallel.auto_jit_compile(self)
        # The loss and metrics are handled here, per task; Keras's own
        # CompileLoss would try to build itself from the episode dict.
        super().compile(optimizer=optimizer, run_eagerly=run_eagerly,
                        steps_per_execution=steps_per_execution,
                        jit_compile=jit_compile, **kwargs)
        checks.check_learning_rate(self.optimizer)
        self._compile_config = serialization_lib.SerializableDict(
            optimizer=self.optimizer, loss=loss, metrics=metrics,
            run_eagerly=run_eagerly, steps_per_execution=steps_per_execution,
            jit_compile=self.jit_compile)

    def compile_from_config(self, config):
        config = serialization_lib.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            # In the order `train_step` applies gradients in, which is the
            # order `fit` builds the optimizer in: its slots load by
            # position.
            self.optimizer.build(self._meta_variables())

    def _eval_steps(self, steps):
        if steps is not None:
            validation.check_positive_int("steps", steps)
            return steps
        return self.eval_inner_steps or self.inner_steps

    # ---------------------------------------------------------- entry points

    def fit(self, *args, **kwargs):
        # Episodes come from tf.data, which Keras never shuffles; its default
        # shuffle=True would only print a warning on every call.
        kwargs.setdefault("shuffle", False)
        callbacks = list(kwargs.get("callbacks") or [])
        if self.max_consecutive_skips is not None and not any(
                isinstance(c, km_callbacks.NonFiniteGuard) for c in callbacks):
            # First, so that callbacks after it (TensorBoard) log its count.
            callbacks.insert(
                0, km_callbacks.NonFiniteGuard(self.max_consecutive_skips))
        kwargs["callbacks"] = callbacks
        self._validate_data(args[0] if args else kwargs.get("x"), "fit data")
        self._validate_data(kwargs.get("validation_data"), "validation_data")
        if args:
            args = (self._split_for_replicas(args[0]),) + tuple(args[1:])
        for key in ("x", "validation_data"):
            if kwargs.get(key) is not None:
                kwargs[key] = self._split_for_replicas(kwargs[key])
        return super().fit(*args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        # fit's own validation passes come here with a cached dataset that
        # was checked when fit started.
        if not kwargs.get("_use_cached_eval_dataset"):
            self._validate_data(x, "evaluate data")
            x = self._split_for_replicas(x)
        return super().evaluate(x, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        self._validate_data(x, "predict data", finite_keys=(
            "support_x", "support_y", "query_x"))
        return super().predict(x, *args, **kwargs)

    def train_on_batch(self, x=None, *args, **kwargs):
        self._validate_data(x, "train_on_batch data")
        return super().train_on_batch(x, *args, **kwargs)

    def test_on_batch(self, x=None, *args, **kwargs):
        self._validate_data(x, "test_on_batch data")
        return super().test_on_batch(x, *args, **kwargs)

    def _validate_data(self, data, where, finite_keys=()):
        """Checks the first episode batch against the model and the loss,
        eagerly, before anything is compiled (see `checks`)."""
        if self.compiled:
            checks.validate_data(data, self.model, self._loss_kind, where,
                                 finite_keys)

    def _split_for_replicas(self, data):
        """Under a strategy with several replicas, an episode dataset is
        re-batched along the task axis, so that Keras's
        `experimental_distribute_dataset` gives each replica a slice of
        every meta-batch (see `keras_meta.distribute.split_tasks`)."""
        replicas = self.distribute_strategy.num_replicas_in_sync
        if replicas > 1 and isinstance(data, tf.data.Dataset) and (
                isinstance(data.element_spec, dict)):
            return km_distribute.split_tasks(data, replicas)
        return data

    # ---------------------------------------------------------------- steps

    def train_step(self, data):
        episode = checks.episode_of(data)
        # Before the update: the pass reads the meta-weights.
        pre_losses = self._maybe_pre_adaptation_pass(episode)
        meta_loss, grads, outputs, _ = meta_gradients.compute(
            self, episode, self._second_order())
        # Zeroed layers: a zero gradient leaves Adam's and SGD's moments
        # and the weights at zero.
        grads = [tf.zeros_like(g) if i in self._zeroed_indices else g
                 for i, g in enumerate(grads)]
        variables = self._meta_variables()
        quantity = skipping.quantity(pre_losses, outputs["losses"][:, 1:],
                                     [meta_loss, *grads])
        ok = tf.equal(quantity, 0)
        state = batch_norm.state_after_step(outputs["non_trainable"])

        def apply(grads, state):
            self.optimizer.apply(grads, variables)
            batch_norm.assign_state(self._state_variables(), state)

        # One device: tf.cond. Under a strategy: apply, then undo unless ok
        # (see km_distribute.apply_if for why).
        km_distribute.apply_if(ok, apply, (grads, state), undo=(
            list(self.optimizer.variables) + variables
            + self._state_variables()))
        skipping.count(self, quantity)
        self._meta_loss_tracker.update_state(meta_loss)
        self._update_query_metrics(episode, outputs)
        return self._logs(training=True)

    def test_step(self, data):
        episode = checks.episode_of(data)
        steps = self._eval_steps(None)
        self._check_step_trackers(steps)
        _, _, outputs, _ = task_parallel.run_episode(
            self, episode, steps, training=self.transductive,
            second_order=False, record_steps=range(steps + 1))
        self._meta_loss_tracker.update_state(
            tf.reduce_mean(outputs["losses"][:, -1]))
        for k, tracker in enumerate(self._step_loss_trackers, start=1):
            tracker.update_state(tf.reduce_mean(outputs["losses"][:, k]))
        self._update_query_metrics(episode, outputs)
        return self._logs()

    def call(self, inputs, training=None):
        """Episode dict -> post-adaptation query predictions; else a forward
        pass of the wrapped model with the meta-learned weights."""
        if isinstance(inputs, dict):
            episode = checks.episode_of(inputs)
            _, _, outputs, _ = task_parallel.run_episode(
                self, episode, self._eval_steps(None),
                training=self.transductive, second_order=False,
                record_steps=())
            return outputs["post_pred"]
        return self.model(inputs, training=training)

    # --------------------------------------------------------------- config

    def get_config(self):
        config = super().get_config()
        config.update({
            "model": serialization_lib.serialize_keras_object(self.model),
            "inner_learning_rate": self.inner_learning_rate,
            "inner_steps": self.inner_steps,
            "first_order": self.first_order,
            "eval_inner_steps": self.eval_inner_steps,
            "inner_optimizer": serialization_lib.serialize_keras_object(
                self.inner_optimizer),
            "multi_step_loss": self.multi_step_loss,
            "multi_step_loss_anneal_steps": self.multi_step_loss_anneal_steps,
            "adapted_layers": self.adapted_layers,
            "transductive": self.transductive,
            "task_parallelism": self.task_parallelism,
            "max_consecutive_skips": self.max_consecutive_skips,
            "track_pre_adaptation": self.track_pre_adaptation,
            "inner_guard": self.inner_guard,
            "zeroed_layers": self.zeroed_layers,
        })
        return saving.stamp(config)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = serialization_lib.deserialize_keras_object(
            config["model"])
        # Files from keras_meta 0.1.0 and 0.2.0 carry `learn_inner_rates`;
        # 0.1.0 files name the rule only there.
        rates = config.pop("learn_inner_rates", None)
        if config.get("inner_optimizer") is None and rates is not None:
            config["inner_optimizer"] = _RULE_OF_RATES.get(rates, rates)
        elif config.get("inner_optimizer") is None:
            config.pop("inner_optimizer", None)
        return saving.build(cls, config)

"""MAML as a `keras.Model`: meta-learn an initialization that adapts fast."""

import numbers

import keras
import tensorflow as tf
from keras.src.layers.convolutional.base_conv import BaseConv
from keras.src.saving import serialization_lib

from keras_meta import backend as km_backend
from keras_meta import callbacks as km_callbacks
from keras_meta import distribute as km_distribute
from keras_meta import saving
from keras_meta.data.episode import EPISODE_KEYS
from keras_meta.data.episode import validate_episode
from keras_meta.maml import inner_rules as inner_optimizers
from keras_meta.models import batched_dense
from keras_meta.models import data_checks
from keras_meta.models import exact_moments
from keras_meta.models import inner_rates
from keras_meta.maml.inner_rules import sgd as inner_sgd
from keras_meta.rules import inner_loop

TASK_PARALLELISM = ("auto", "batched", "vectorized", "sequential",
                    "unrolled")
# What a skipped meta-step found non-finite, checked in this order; the
# index is stored in `MAML.nonfinite_quantity`.
NONFINITE_QUANTITIES = (
    "nothing",
    "query loss before adaptation (the model's outputs or the data)",
    "query loss after adaptation (the inner loop diverged; a lower "
    "inner_learning_rate or fewer inner_steps may help)",
    "meta-gradient",
)


def _resolve_loss(loss):
    """Returns `(per_example_fn, name)` for a Keras loss identifier.

    Per-example losses let the inner loop average over one task's examples
    without the replica scaling that `keras.losses.Loss.__call__` applies.
    """
    if loss is None:
        raise ValueError(
            "MAML.compile needs a `loss` (e.g. 'mse' for regression or "
            "keras.losses.SparseCategoricalCrossentropy(from_logits=True) "
            "for classification); got None."
        )
    loss_obj = keras.losses.get(loss)
    if isinstance(loss_obj, keras.losses.Loss):
        return loss_obj.call, loss_obj.name
    if callable(loss_obj):
        return loss_obj, getattr(loss_obj, "__name__", "loss")
    raise ValueError(f"Unknown loss {loss!r}.")


def _accuracy_for(loss_name):
    name = loss_name.lower()
    if "sparse" in name:
        return keras.metrics.SparseCategoricalAccuracy
    if "binary" in name:
        return keras.metrics.BinaryAccuracy
    if "categorical" in name:
        return keras.metrics.CategoricalAccuracy
    raise ValueError(
        f"'accuracy' needs a classification loss to pick the accuracy "
        f"metric; the compiled loss is {loss_name!r}. Pass a metric "
        "object such as keras.metrics.SparseCategoricalAccuracy()."
    )


def _resolve_metric(metric, loss_name, prefix):
    """A fresh metric object named `prefix + name`."""
    if isinstance(metric, str) and metric in ("accuracy", "acc"):
        return _accuracy_for(loss_name)(name=prefix + "accuracy")
    if isinstance(metric, keras.metrics.Metric):
        config = metric.get_config()
        config["name"] = prefix + metric.name
        return metric.__class__.from_config(config)
    fn = keras.metrics.get(metric)
    if isinstance(fn, keras.metrics.Metric):
        return _resolve_metric(fn, loss_name, prefix)
    name = metric if isinstance(metric, str) else fn.__name__
    return keras.metrics.MeanMetricWrapper(fn, name=prefix + name)


def _first_nonfinite(pre_losses, post_losses, meta_values):
    """0 if all finite, else the index in NONFINITE_QUANTITIES of the first
    non-finite group (an int32 scalar tensor, usable inside XLA)."""

    def bad(tensors):
        return tf.logical_not(tf.reduce_all(
            [tf.reduce_all(tf.math.is_finite(t)) for t in tensors]))

    quantity = tf.constant(0, tf.int32)
    # Reversed, so that the earliest group that fails wins.
    for index, tensors in reversed(list(enumerate(
            [[pre_losses], [post_losses], meta_values], start=1))):
        quantity = tf.where(bad(tensors), index, quantity)
    return quantity


def _pre_adaptation_interval(track):
    """Meta-steps between pre-adaptation passes in `fit` (0: never)."""
    if isinstance(track, bool):
        return int(track)
    if isinstance(track, numbers.Integral) and track >= 1:
        return int(track)
    raise ValueError(
        "`track_pre_adaptation` must be a bool or an int >= 1 (run the "
        f"pass on every N-th meta-step); got {track!r}.")


def _flat_tasks(t):
    """[tasks, examples, ...] -> [tasks * examples, ...]."""
    return tf.reshape(t, [-1] + list(t.shape[2:]))


def _agree_on_quantity(quantity):
    """Under a strategy: the first quantity that failed on any replica, the
    same on every replica (so all of them skip together); else unchanged."""
    if not tf.distribute.has_strategy():
        return quantity
    ctx = tf.distribute.get_replica_context()
    # float32: int32 all-reduces fail inside Keras's steps_per_execution
    # loop under MirroredStrategy ("You must feed a value for placeholder").
    failed = ctx.all_reduce(
        tf.distribute.ReduceOp.SUM,
        tf.one_hot(quantity, len(NONFINITE_QUANTITIES), dtype=tf.float32))
    failed = tf.greater(failed[1:], 0)
    return tf.where(tf.reduce_any(failed),
                    tf.cast(tf.argmax(tf.cast(failed, tf.int32)), tf.int32) + 1,
                    0)


def _check_learning_rate(optimizer):
    rate = getattr(optimizer, "learning_rate", None)
    if rate is None or callable(rate):  # a schedule: checked as it runs
        return
    value = float(keras.ops.convert_to_numpy(rate))
    if not value >= 0:
        raise ValueError(
            f"The meta-optimizer's learning rate must be >= 0; got {value:g} "
            f"({type(optimizer).__name__}).")


def _check_positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1; got {value!r}.")


@keras.saving.register_keras_serializable(package="keras_meta")
class MAML(keras.Model):
    """Model-Agnostic Meta-Learning around any built Keras model.

    MAML learns initial weights from which a few gradient steps on a task's
    support set give a model that does well on that task's query set. Each
    `train_step` adapts fast weights per task with nested `tf.GradientTape`s
    through `model.stateless_call` (no variable is assigned in the inner
    loop), measures the adapted model on the query set, and applies the
    meta-gradient of the mean query loss with the compiled optimizer.

    The variants are arguments of this one class (and small subclasses that
    set them): `first_order=True` is FOMAML; `learn_inner_rates=
    "per_parameter"` is Meta-SGD (`keras_meta.MetaSGD`); `learn_inner_rates=
    "per_step"` with `multi_step_loss=True` is MAML++ (`keras_meta.MAMLPlusPlus`);
    `adapted_layers=[...]` adapts only those layers (ANIL,
    `keras_meta.ANIL`); `inner_optimizer="lstm"` replaces the inner SGD step
    by a meta-learned coordinatewise LSTM (Ravi and Larochelle, 2017). The
    inner update rule is swappable like the model (`inner_optimizer`).

    Data: episode dicts with a task axis (see `keras_meta.data.episode`).
    `fit` meta-trains; `evaluate` reports the query loss and metrics before
    (`pre_adapt_*`) and after (`post_adapt_*`) `eval_inner_steps` steps;
    `predict` on episodes returns post-adaptation query predictions and on
    plain inputs the meta-model's predictions; `adapt` returns a plain
    `keras.Model` adapted to one task.

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
        learn_inner_rates: None (fixed rate), "per_parameter" (Meta-SGD) or
            "per_step" (one rate per adapted variable per step, MAML++);
            the same as `inner_optimizer` None, "meta_sgd" or "lslr".
        inner_optimizer: the inner update rule: "sgd" (plain SGD at
            `inner_learning_rate`), "meta_sgd" (a learned rate per
            parameter), "lslr" (a learned rate per adapted variable per
            step), "lstm" (the coordinatewise LSTM rule of
            `LearnedOptimizer`, `keras_meta.models.InnerLSTM`) or a
            `keras_meta.models.InnerOptimizer`. The rule's parameters are
            meta-learned with the initialization. None (default): taken
            from `learn_inner_rates`; giving both is an error unless they
            agree.
        multi_step_loss: bool, meta-train on a weighted sum of the query
            losses after every inner step (MAML++), annealed towards the
            last step over `multi_step_loss_anneal_steps` meta-steps.
        multi_step_loss_anneal_steps: int >= 1.
        adapted_layers: None to adapt every trainable variable, or a list
            of layer names whose variables adapt (others stay at their
            meta-learned values in the inner loop, as in ANIL).
        transductive: bool, use batch statistics at evaluation (above).
        task_parallelism: "auto", "batched" (all tasks' weights stacked on
            a leading axis and every layer run once for all tasks; only for
            a `keras.Sequential` of plain Dense layers, see
            `keras_meta.models.batched_dense`, and an elementwise inner
            rule), "vectorized" (`tf.vectorized_map` over tasks),
            "sequential" (a `tf.while_loop` over tasks, one compiled loop
            body; in training each task's meta-gradient is taken inside
            the body and summed, which compiled 2x faster and used a third
            less memory than differentiating the loop from outside) or
            "unrolled" (a Python loop over tasks: slow to compile, kept for
            comparison). "auto" picks "batched" under XLA where it applies
            (the built-in SGD rules), else "sequential" under XLA, whose compile
            time for `vectorized_map` is minutes on CPU, and for
            convolutional models, where `vectorized_map` ran 3x slower;
            "vectorized" otherwise (see BUILD_NOTES.md for measurements).
        track_pre_adaptation: int >= 1 or bool: how often `fit` also runs
            each task's query set through the meta-weights to log
            `pre_adapt_*`. That pass only feeds the logs, and costs a
            forward pass of every query set (a third of a conv4 meta-step
            when run every step). An int N runs it on every N-th meta-step
            and on the first step of each epoch, so the epoch's
            `pre_adapt_*` are means over those steps (default 10); True
            runs it on every step, False never (no `pre_adapt_*` training
            logs). Training is the same either way; `evaluate` always
            reports them.
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
    """

    def __init__(
        self,
        model,
        inner_learning_rate=0.01,
        inner_steps=1,
        first_order=False,
        eval_inner_steps=None,
        learn_inner_rates=None,
        inner_optimizer=None,
        multi_step_loss=False,
        multi_step_loss_anneal_steps=1000,
        adapted_layers=None,
        transductive=True,
        task_parallelism="auto",
        max_consecutive_skips=20,
        track_pre_adaptation=10,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"`model` must be a keras.Model; got {type(model).__name__}."
            )
        if not model.built:
            raise ValueError(
                "`model` must be built before it is wrapped in MAML, e.g. "
                "start a Sequential model with keras.Input(shape) or call it "
                "once on a batch."
            )
        if not model.trainable_variables:
            raise ValueError(
                f"`model` {model.name!r} has no trainable variables: there is "
                "nothing for MAML to adapt or meta-learn."
            )
        km_distribute.check_created_in_scope(model)
        if (
            isinstance(inner_learning_rate, bool)
            or not isinstance(inner_learning_rate, (int, float))
            or inner_learning_rate < 0
        ):
            raise ValueError(
                "`inner_learning_rate` must be a float >= 0; got "
                f"{inner_learning_rate!r}."
            )
        _check_positive_int("inner_steps", inner_steps)
        _check_positive_int("eval_inner_steps", eval_inner_steps, True)
        _check_positive_int(
            "multi_step_loss_anneal_steps", multi_step_loss_anneal_steps
        )
        _check_positive_int(
            "max_consecutive_skips", max_consecutive_skips, True
        )
        inner_rates.validate_rate_kind(learn_inner_rates)
        if task_parallelism not in TASK_PARALLELISM:
            raise ValueError(
                f"`task_parallelism` must be one of {TASK_PARALLELISM}; got "
                f"{task_parallelism!r}."
            )
        self.model = model
        self.inner_learning_rate = float(inner_learning_rate)
        self.inner_steps = inner_steps
        self.first_order = bool(first_order)
        self.eval_inner_steps = eval_inner_steps
        self.inner_optimizer = self._resolve_inner_optimizer(
            inner_optimizer, learn_inner_rates
        )
        self.learn_inner_rates = self.inner_optimizer.learned_rates
        self.multi_step_loss = bool(multi_step_loss)
        self.multi_step_loss_anneal_steps = multi_step_loss_anneal_steps
        self.adapted_layers = (
            None if adapted_layers is None else list(adapted_layers)
        )
        self.transductive = bool(transductive)
        self.task_parallelism = task_parallelism
        self.max_consecutive_skips = max_consecutive_skips
        self._pre_adaptation_interval = _pre_adaptation_interval(
            track_pre_adaptation)
        # A plain bool or int (not e.g. numpy's), so the config is JSON.
        self.track_pre_adaptation = (
            track_pre_adaptation if isinstance(track_pre_adaptation, bool)
            else self._pre_adaptation_interval)

        self._adapted_indices = self._find_adapted_indices(self.adapted_layers)
        self._dense_plan = batched_dense.plan(model)
        if task_parallelism == "batched" and self._dense_plan is None:
            raise ValueError(
                "task_parallelism='batched' needs a keras.Sequential of plain "
                "Dense layers (no regularizers, non-trainable variables or "
                f"other layers); {model.name!r} is not one. Use 'auto'.")
        adapted = [model.trainable_variables[i] for i in self._adapted_indices]
        self.inner_optimizer_variables = self.inner_optimizer.build(
            self, adapted, inner_steps, self.inner_learning_rate
        )
        self.skipped_steps = self.add_weight(
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            name="skipped_steps",
        )
        # `nonfinite_quantity` indexes NONFINITE_QUANTITIES.
        self.consecutive_skipped_steps = saving.unsaved_counter(
            0, tf.int64, "consecutive_skipped_steps")
        self.nonfinite_quantity = saving.unsaved_counter(
            0, tf.int32, "nonfinite_quantity")
        self._query_metrics = []
        self.built = True

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _resolve_inner_optimizer(inner_optimizer, learn_inner_rates):
        if inner_optimizer is None:
            inner_optimizer = {
                None: "sgd", "per_parameter": "meta_sgd", "per_step": "lslr"
            }[learn_inner_rates]
        rule = inner_optimizers.get(inner_optimizer)
        if learn_inner_rates is not None and (
            rule.learned_rates != learn_inner_rates
        ):
            raise ValueError(
                f"`learn_inner_rates={learn_inner_rates!r}` and "
                f"`inner_optimizer={inner_optimizer!r}` disagree; give only "
                "`inner_optimizer` (`learn_inner_rates` is kept for older "
                "code: 'per_parameter' is 'meta_sgd', 'per_step' is 'lslr')."
            )
        return rule

    def _meta_variables(self):
        """What the outer optimizer updates, in the order it is built with:
        the wrapped model's trainable variables, then the inner rule's."""
        return list(self.model.trainable_variables) + list(
            self.inner_optimizer_variables
        )

    @property
    def inner_rate_variables(self):
        """The learned inner rates (empty unless the rule learns rates)."""
        if self.inner_optimizer.learned_rates is None:
            return []
        return list(self.inner_optimizer_variables)

    def _find_adapted_indices(self, layer_names):
        variables = self.model.trainable_variables
        if layer_names is None:
            return list(range(len(variables)))
        layers = {
            layer.name: layer for layer in self.model._flatten_layers()
        }
        indices = []
        for name in layer_names:
            if name not in layers:
                known = [n for n, l in layers.items() if l.trainable_weights]
                raise ValueError(
                    f"`adapted_layers` names {name!r}, which is not a layer "
                    f"of {self.model.name!r}; layers with weights: {known}."
                )
            ids = {id(v) for v in layers[name].trainable_variables}
            if not ids:
                raise ValueError(
                    f"`adapted_layers` names {name!r}, which has no "
                    "trainable variables."
                )
            indices += [i for i, v in enumerate(variables) if id(v) in ids]
        return sorted(set(indices))

    @property
    def adapted_variables(self):
        """The wrapped model's variables that the inner loop adapts."""
        variables = self.model.trainable_variables
        return [variables[i] for i in self._adapted_indices]

    def compile(
        self,
        optimizer="adam",
        loss="mse",
        metrics=None,
        run_eagerly=False,
        steps_per_execution=1,
        jit_compile="auto",
        **kwargs,
    ):
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
                runs as one batched program (`task_parallelism`), the one
                case where XLA was measured faster on CPU.
            **kwargs: other `keras.Model.compile` arguments.
        """
        self._loss_fn, loss_name = _resolve_loss(loss)
        self._loss_kind = data_checks.loss_kind(loss_name)
        metrics = list(metrics or [])
        self._pre_metrics = [
            _resolve_metric(m, loss_name, "pre_adapt_") for m in metrics
        ]
        self._post_metrics = [
            _resolve_metric(m, loss_name, "post_adapt_") for m in metrics
        ]
        self._meta_loss_tracker = keras.metrics.Mean(name="loss")
        self._pre_loss_tracker = keras.metrics.Mean(name="pre_adapt_loss")
        self._post_loss_tracker = keras.metrics.Mean(name="post_adapt_loss")
        # Evaluation also logs the query loss after each inner step.
        self._step_loss_trackers = [
            keras.metrics.Mean(name=f"query_loss_after_step_{k}")
            for k in range(1, self._eval_steps(None) + 1)
        ]
        if jit_compile == "auto" and not run_eagerly:
            jit_compile = self._auto_jit_compile()
        # The loss and metrics are handled here, per task; Keras's own
        # CompileLoss would try to build itself from the episode dict.
        super().compile(
            optimizer=optimizer,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
            **kwargs,
        )
        _check_learning_rate(self.optimizer)
        self._compile_config = serialization_lib.SerializableDict(
            optimizer=self.optimizer,
            loss=loss,
            metrics=metrics,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=self.jit_compile,
        )

    def compile_from_config(self, config):
        config = serialization_lib.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            # In the order `train_step` applies gradients in, which is the
            # order `fit` builds the optimizer in: its slots load by
            # position.
            self.optimizer.build(self._meta_variables())

    @property
    def metrics(self):
        if not self.compiled:
            return []
        return [
            self._meta_loss_tracker,
            self._pre_loss_tracker,
            self._post_loss_tracker,
            *self._pre_metrics,
            *self._post_metrics,
            *self._step_loss_trackers,
        ]

    # ------------------------------------------------------------- inner loop

    def _task_loss(self, y_true, y_pred, extra_losses):
        loss = tf.reduce_mean(self._loss_fn(y_true, y_pred))
        if extra_losses:
            loss = loss + tf.add_n(extra_losses)
        return loss

    def _forward(self, params, non_trainable, x, training):
        # Exact second derivatives through batch-norm statistics.
        with exact_moments.exact_moments():
            return self.model.stateless_call(
                params, non_trainable, x, training=training,
                return_losses=True,
            )

    def _adapt_one_task(
        self,
        params,
        rates,
        non_trainable,
        support_x,
        support_y,
        steps,
        training,
        second_order,
        on_step=None,
    ):
        """Runs `steps` inner steps of the inner rule on one task's support.

        Args:
            params: list of tensors, the model's trainable values.
            rates: list of tensors, the values of the inner rule's weights
                (`inner_optimizer_variables`; may be empty).
            non_trainable: list of tensors, the model's non-trainable values.
            support_x, support_y: one task's support set (no task axis).
            steps: Python int, the number of inner steps.
            training: the `training` flag of the forward passes.
            second_order: keep the second-order term of the meta-gradient.
            on_step: optional `fn(step, fast_params)` called after each step.

        Returns:
            The adapted ("fast") parameter list.
        """
        fast = list(params)
        adapted_indices = self._adapted_indices

        def with_adapted(adapted):
            merged = list(fast)
            for i, value in zip(adapted_indices, adapted):
                merged[i] = value
            return merged

        def support_loss(adapted, step):
            del step
            pred, _, losses = self._forward(
                with_adapted(adapted), non_trainable, support_x, training
            )
            return self._task_loss(support_y, pred, losses)

        report = None
        if on_step is not None:
            def report(step, adapted):
                on_step(step, with_adapted(adapted))

        adapted, _, _ = inner_loop.unroll(
            self.inner_optimizer, rates, [fast[i] for i in adapted_indices],
            support_loss, steps, second_order=second_order, on_step=report,
        )
        return with_adapted(adapted)

    def _run_task(
        self, params, rates, non_trainable, task, steps, training,
        second_order, record_steps, pre_adaptation=True,
    ):
        """Adapts on one task and evaluates the query set.

        Returns a dict: `losses` [len(record_steps)] query losses after each
        recorded number of steps; `pre_pred`/`post_pred` query predictions
        before and after adaptation; `non_trainable` the state after the
        last query pass. With `pre_adaptation=False` the query pass at the
        meta-weights is skipped: no `pre_pred`, and the step-0 loss is 0.
        """
        results = {}

        def query(step, fast):
            pred, new_state, losses = self._forward(
                fast, non_trainable, task["query_x"], training
            )
            results[step] = (
                self._task_loss(task["query_y"], pred, losses),
                pred,
                new_state,
            )

        def on_step(step, fast):
            if step in record_steps and step != steps:
                query(step, fast)

        if pre_adaptation:
            query(0, params)
        fast = self._adapt_one_task(
            params, rates, non_trainable, task["support_x"],
            task["support_y"], steps, training, second_order, on_step,
        )
        query(steps, fast)
        if not pre_adaptation:
            results[0] = (tf.zeros_like(results[steps][0]), None, None)
        outputs = {
            "losses": tf.stack([results[s][0] for s in record_steps]),
            "post_pred": results[steps][1],
            "non_trainable": list(results[steps][2]),
        }
        if pre_adaptation:
            outputs["pre_pred"] = results[0][1]
        return outputs

    def _batchable(self):
        """True if all tasks can run as one batched program (see
        `batched_dense`): a plain Dense stack and a built-in SGD rule."""
        return self._dense_plan is not None and isinstance(
            self.inner_optimizer, inner_sgd.InnerSGD)

    def _auto_jit_compile(self):
        """XLA on GPU and TPU; on CPU only for the batched Dense path, the
        one formulation XLA made faster there (BUILD_NOTES.md)."""
        strategy = getattr(self, "_distribute_strategy", None)
        if km_backend.default_jit_compile(strategy=strategy):
            return True
        return (self._batchable() and strategy is None
                and not tf.distribute.has_strategy())

    def _parallelism(self):
        if self.task_parallelism != "auto":
            return self.task_parallelism
        if self.jit_compile and self._batchable():
            return "batched"
        if self.jit_compile or any(
            isinstance(layer, BaseConv) for layer in self.model._flatten_layers()
        ):
            return "sequential"
        if isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy):
            return "sequential"  # XLA compiles the step; see above
        return "vectorized"

    def _map_tasks(self, fn, episode, record_steps, pre_adaptation=True):
        mode = self._parallelism()
        if mode == "vectorized":
            return tf.vectorized_map(fn, episode)
        if mode == "unrolled":
            tasks = episode["query_x"].shape[0]
            if tasks is None:
                raise ValueError(
                    "task_parallelism='unrolled' needs a static number of "
                    "tasks per batch (use drop_remainder=True)."
                )
            outputs = [
                fn(tf.nest.map_structure(lambda t: t[i], episode))
                for i in range(tasks)
            ]
            return tf.nest.map_structure(lambda *t: tf.stack(t), *outputs)
        signature = self._task_output_signature(
            episode, record_steps, pre_adaptation)
        return tf.map_fn(fn, episode, fn_output_signature=signature)

    def _task_output_signature(self, episode, record_steps, pre_adaptation):
        """The `TensorSpec`s of one task's `_run_task` outputs."""
        query_x = episode["query_x"]
        pred_spec = self.model.compute_output_spec(
            keras.KerasTensor(query_x.shape[1:], query_x.dtype)
        )
        signature = {
            "losses": tf.TensorSpec([len(record_steps)], pred_spec.dtype),
            "post_pred": tf.TensorSpec(pred_spec.shape, pred_spec.dtype),
            "non_trainable": [
                tf.TensorSpec(v.shape, v.dtype)
                for v in self.model.non_trainable_variables
            ],
        }
        if pre_adaptation:
            signature["pre_pred"] = signature["post_pred"]
        return signature

    def _meta_gradients_per_task(self, episode, record, loss_scale):
        """Meta-loss and meta-gradients, each task differentiated inside
        the loop over tasks.

        The meta-loss is a mean over tasks, so its gradient is the sum of
        each task's own gradient, taken inside the loop body and summed in
        the loop's carry. Differentiating the loop from outside instead
        makes TensorFlow build the gradient of a `while_loop` whose body is
        the whole inner loop (`_WhileGrad`, most of the step's compile
        time) and keep every intermediate in per-iteration accumulators.

        Returns `(meta_loss, grads, outputs, record_steps)` as
        `_meta_gradients`.
        """
        steps = self.inner_steps
        record_steps = sorted(set(record) | {0, steps})
        pre_adaptation = False  # `_pre_adaptation_pass`, if at all
        params = [tf.convert_to_tensor(v)
                  for v in self.model.trainable_variables]
        rates = [tf.convert_to_tensor(v)
                 for v in self.inner_optimizer_variables]
        state = [tf.convert_to_tensor(v)
                 for v in self.model.non_trainable_variables]
        signature = self._task_output_signature(
            episode, record_steps, pre_adaptation)
        tasks = tf.shape(episode["query_x"])[0]
        arrays = tf.nest.map_structure(
            lambda spec: tf.TensorArray(spec.dtype, size=tasks,
                                        element_shape=spec.shape),
            signature)
        weights = params + rates
        sums = [tf.zeros_like(w) for w in weights]
        scale = loss_scale / tf.cast(tasks, params[0].dtype)

        def body(i, arrays, sums, loss_sum):
            task = tf.nest.map_structure(lambda t: t[i], episode)
            # Fresh tensors inside the body, so the tape sees their uses.
            local = [tf.identity(w) for w in weights]
            with tf.GradientTape() as tape:
                tape.watch(local)
                outputs = self._run_task(
                    local[:len(params)], local[len(params):], state, task,
                    steps, True, not self.first_order, record_steps,
                    pre_adaptation)
                task_loss = self._meta_loss(outputs["losses"][None])
                scaled_loss = task_loss * scale
            grads = tape.gradient(scaled_loss, local,
                                  unconnected_gradients="zero")
            arrays = tf.nest.map_structure(
                lambda array, value: array.write(i, value), arrays, outputs)
            sums = [s + g for s, g in zip(sums, grads)]
            return i + 1, arrays, sums, loss_sum + task_loss

        _, arrays, grads, loss_sum = tf.while_loop(
            lambda i, *_: i < tasks, body,
            (tf.constant(0), arrays, sums, tf.zeros([], params[0].dtype)))
        outputs = tf.nest.map_structure(lambda array: array.stack(), arrays)
        meta_loss = loss_sum / tf.cast(tasks, loss_sum.dtype)
        return meta_loss, grads, outputs, record_steps

    def _run_tasks_batched(self, params, rates, episode, steps, second_order,
                           record_steps, pre_adaptation):
        """`_run_task` for all tasks at once on stacked weights (see
        `batched_dense`); the same outputs, with the task axis first."""
        tasks = tf.shape(episode["support_x"])[0]
        adapted_set = set(self._adapted_indices)
        # Adapted weights get a task axis; the gradient of the sum of the
        # task losses with respect to them is every task's own gradient.
        fast = [
            tf.broadcast_to(p, tf.concat([[tasks], tf.shape(p)], 0))
            if i in adapted_set else p
            for i, p in enumerate(params)
        ]

        def task_losses(weights, x, y):
            pred = batched_dense.forward(self._dense_plan, weights, x)
            return tf.reduce_mean(self._loss_fn(y, pred), axis=1), pred

        results = {}
        if pre_adaptation:
            results[0] = task_losses(params, episode["query_x"],
                                     episode["query_y"])
        adapted_indices = self._adapted_indices

        def with_adapted(adapted):
            merged = list(fast)
            for i, value in zip(adapted_indices, adapted):
                merged[i] = value
            return merged

        def support_loss(adapted, step):
            del step
            # The gradient of the sum of the task losses with respect to
            # the stacked weights is every task's own gradient.
            losses, _ = task_losses(with_adapted(adapted),
                                    episode["support_x"], episode["support_y"])
            return tf.reduce_sum(losses)

        def on_step(step, adapted):
            if step in record_steps and step != steps:
                results[step] = task_losses(
                    with_adapted(adapted), episode["query_x"],
                    episode["query_y"])

        adapted, _, _ = inner_loop.unroll(
            self.inner_optimizer, rates, [fast[i] for i in adapted_indices],
            support_loss, steps, second_order=second_order, on_step=on_step,
        )
        fast = with_adapted(adapted)
        results[steps] = task_losses(fast, episode["query_x"],
                                     episode["query_y"])
        if not pre_adaptation:
            results[0] = (tf.zeros_like(results[steps][0]), None)
        outputs = {
            "losses": tf.stack([results[s][0] for s in record_steps], axis=1),
            "post_pred": results[steps][1],
            "non_trainable": [],
        }
        if pre_adaptation:
            outputs["pre_pred"] = results[0][1]
        return outputs

    def _run_episode(self, episode, steps, training, second_order,
                     record_steps, pre_adaptation=True):
        params = [tf.convert_to_tensor(v) for v in self.model.trainable_variables]
        rates = [
            tf.convert_to_tensor(v) for v in self.inner_optimizer_variables
        ]
        state = [
            tf.convert_to_tensor(v) for v in self.model.non_trainable_variables
        ]
        record_steps = sorted(set(record_steps) | {0, steps})
        if self._parallelism() == "batched":
            return params, rates, self._run_tasks_batched(
                params, rates, episode, steps, second_order, record_steps,
                pre_adaptation), record_steps
        return (
            params,
            rates,
            self._map_tasks(
                lambda task: self._run_task(
                    params, rates, state, task, steps, training,
                    second_order, record_steps, pre_adaptation,
                ),
                episode,
                record_steps,
                pre_adaptation,
            ),
            record_steps,
        )

    # ------------------------------------------------------------ Keras steps

    def fit(self, *args, **kwargs):
        # Episodes come from tf.data, which Keras never shuffles; its default
        # shuffle=True would only print a warning on every call.
        kwargs.setdefault("shuffle", False)
        callbacks = list(kwargs.get("callbacks") or [])
        if self.max_consecutive_skips is not None and not any(
            isinstance(c, km_callbacks.NonFiniteGuard) for c in callbacks
        ):
            # First, so that callbacks after it (TensorBoard) log its count.
            callbacks.insert(
                0, km_callbacks.NonFiniteGuard(self.max_consecutive_skips)
            )
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

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras (under a strategy) takes a batch from the iterator and
        # `strategy.reduce`s it to build its CompileLoss/CompileMetrics,
        # which MultiWorkerMirroredStrategy refuses for an episode dict.
        # MAML is built and computes its own loss and metrics, so only the
        # optimizer needs building, which needs no batch. Building it here,
        # not inside the first traced step, saves a second trace of the
        # whole step (tf.function retraces a function that created
        # variables): half the first-call time.
        if self._distribute_strategy is None:
            if self.optimizer is not None and not self.optimizer.built:
                self.optimizer.build(self._meta_variables())
            return
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch={})

    def _split_for_replicas(self, data):
        """Under a strategy with several replicas, an episode dataset is
        re-batched along the task axis, so that Keras's
        `experimental_distribute_dataset` gives each replica a slice of
        every meta-batch (see `keras_meta.distribute.split_tasks`)."""
        replicas = self.distribute_strategy.num_replicas_in_sync
        if replicas > 1 and isinstance(data, tf.data.Dataset) and (
            isinstance(data.element_spec, dict)
        ):
            return km_distribute.split_tasks(data, replicas)
        return data

    def predict(self, x, *args, **kwargs):
        self._validate_data(x, "predict data")
        return super().predict(x, *args, **kwargs)

    def train_on_batch(self, x=None, *args, **kwargs):
        self._validate_data(x, "train_on_batch data")
        return super().train_on_batch(x, *args, **kwargs)

    def test_on_batch(self, x=None, *args, **kwargs):
        self._validate_data(x, "test_on_batch data")
        return super().test_on_batch(x, *args, **kwargs)

    def _validate_data(self, data, where):
        """Checks the first episode batch against the model and the loss,
        eagerly, before anything is compiled (see `data_checks`)."""
        if data is None or not self.compiled:
            return
        episode = data_checks.first_episode(data)
        if episode is not None:
            data_checks.check_episode(episode, self.model, self._loss_kind,
                                      where)

    def _check_episode(self, data):
        # train_on_batch and friends pack x as (x,) or (x, None, None).
        if isinstance(data, tuple) and all(d is None for d in data[1:]):
            data = data[0]
        validate_episode(data)
        return {key: data[key] for key in EPISODE_KEYS}

    def _update_query_metrics(self, episode, outputs):
        losses = outputs["losses"]
        if "pre_pred" in outputs:
            self._update_pre_metrics(episode, losses[:, 0],
                                     outputs["pre_pred"])
        self._post_loss_tracker.update_state(tf.reduce_mean(losses[:, -1]))
        y = _flat_tasks(episode["query_y"])
        for metric in self._post_metrics:
            metric.update_state(y, _flat_tasks(outputs["post_pred"]))

    def _update_pre_metrics(self, episode, losses, preds):
        self._pre_loss_tracker.update_state(tf.reduce_mean(losses))
        y = _flat_tasks(episode["query_y"])
        for metric in self._pre_metrics:
            metric.update_state(y, _flat_tasks(preds))

    def _pre_adaptation_pass(self, episode):
        """Each task's query loss and predictions at the meta-weights (the
        training-mode forward pass, before adaptation; nothing is
        differentiated). Returns `(losses [tasks], predictions)`."""
        params = [tf.convert_to_tensor(v)
                  for v in self.model.trainable_variables]
        state = [tf.convert_to_tensor(v)
                 for v in self.model.non_trainable_variables]
        query = {k: episode[k] for k in ("query_x", "query_y")}
        mode = self._parallelism()
        if mode == "batched":
            pred = batched_dense.forward(self._dense_plan, params,
                                         query["query_x"])
            losses = self._loss_fn(query["query_y"], pred)
            return tf.reduce_mean(losses, axis=1), pred

        def one_task(task):
            pred, _, extra = self._forward(params, state, task["query_x"],
                                           True)
            return self._task_loss(task["query_y"], pred, extra), pred

        if mode == "vectorized":
            return tf.vectorized_map(one_task, query)
        pred_spec = self._task_output_signature(episode, (0,), False)[
            "post_pred"]
        return tf.map_fn(one_task, query, fn_output_signature=(
            tf.TensorSpec([], pred_spec.dtype), pred_spec))

    def _maybe_pre_adaptation_pass(self, episode):
        """Runs `_pre_adaptation_pass` and logs it when
        `track_pre_adaptation` says so (every N-th meta-step, and while the
        epoch's `pre_adapt_loss` has no value yet). Returns the per-task
        losses, zeros where the pass did not run."""
        interval = self._pre_adaptation_interval
        tasks = tf.shape(episode["query_x"])[0]
        dtype = self._post_loss_tracker.dtype
        if not interval:
            return tf.zeros([tasks], dtype)

        def run():
            losses, preds = self._pre_adaptation_pass(episode)
            self._update_pre_metrics(episode, losses, preds)
            return tf.cast(losses, dtype)

        if interval == 1:
            return run()
        due = tf.logical_or(
            tf.equal(self._pre_loss_tracker.count, 0),
            tf.equal(self.optimizer.iterations % interval, 0))
        return tf.cond(due, run, lambda: tf.zeros([tasks], dtype))

    def _meta_loss(self, losses):
        """Mean over tasks of the query loss the outer loop minimizes."""
        if not self.multi_step_loss:
            return tf.reduce_mean(losses[:, -1])
        progress = tf.cast(self.optimizer.iterations, tf.float32) / float(
            self.multi_step_loss_anneal_steps
        )
        weights = inner_rates.multi_step_loss_weights(
            self.inner_steps, progress
        )
        # losses[:, 0] is the pre-adaptation loss; steps 1..S follow it.
        weights = tf.cast(weights, losses.dtype)
        return tf.reduce_mean(tf.reduce_sum(losses[:, 1:] * weights, axis=1))

    def _meta_gradients(self, episode):
        """Meta-loss and its gradients for one batch of episodes.

        Returns:
            `(meta_loss, grads, outputs, record_steps)`, where `grads` lines
            up with the wrapped model's trainable variables followed by the
            learned inner rates.
        """
        record = range(self.inner_steps + 1) if self.multi_step_loss else ()
        # Gradients are summed over replicas, so each replica's share of
        # the mean is divided by their number.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if self._parallelism() == "sequential":
            return self._meta_gradients_per_task(
                episode, record, 1.0 / replicas)
        with tf.GradientTape() as tape:
            params, rates, outputs, record_steps = self._run_episode(
                episode,
                self.inner_steps,
                training=True,
                second_order=not self.first_order,
                record_steps=record,
                pre_adaptation=False,  # `_pre_adaptation_pass`, if at all
            )
            meta_loss = self._meta_loss(outputs["losses"])
            scaled_loss = meta_loss / replicas
        grads = tape.gradient(
            scaled_loss, params + rates, unconnected_gradients="zero"
        )
        return meta_loss, grads, outputs, record_steps

    def make_train_function(self, force=False):
        """Keras's train function, or under XLA one XLA program per call.

        Keras runs `steps_per_execution` steps as a graph loop that enters
        the XLA-compiled step once per meta-step; each entry costs about
        0.35 ms on CPU (variable snapshots, the iterator, control flow),
        more than a sinusoid meta-step's arithmetic. With `jit_compile`,
        `steps_per_execution > 1`, one device and episodes of fully known
        shape, the call instead takes the next `steps_per_execution`
        episode batches (fewer at the end of the data) and runs all their
        meta-steps in one XLA program. Same steps, same data order.
        """
        if self.train_function is not None and not force:
            return self.train_function
        steps = self.steps_per_execution
        if (self.run_eagerly or not self.jit_compile or steps <= 1
                or self._distribute_strategy is not None
                or tf.distribute.has_strategy()):
            return super().make_train_function(force)

        @tf.function(jit_compile=True, reduce_retracing=True)
        def run_steps(batches, count):
            logs = self.train_step(tf.nest.map_structure(
                lambda b: b[0], batches))

            def body(i, logs):
                del logs
                return i + 1, self.train_step(tf.nest.map_structure(
                    lambda b: tf.gather(b, i), batches))

            _, logs = tf.while_loop(lambda i, _: i < count, body,
                                    (tf.constant(1), logs))
            return logs

        @tf.function(reduce_retracing=True)
        def next_batches(iterator):
            first = iterator.get_next_as_optional()
            optionals = [first] + [iterator.get_next_as_optional()
                                   for _ in range(steps - 1)]
            count = tf.add_n([tf.cast(o.has_value(), tf.int32)
                              for o in optionals])
            # Missing batches (the data ran out) are padded with copies of
            # the first, and not run: the loop stops at `count`.
            def value(optional):
                return tf.cond(optional.has_value(), optional.get_value,
                               first.get_value)

            batches = tf.nest.map_structure(
                lambda *b: tf.stack(b), *[value(o) for o in optionals])
            return first.has_value(), batches, count

        def function(iterator):
            if not isinstance(iterator, tf.data.Iterator) or not all(
                    spec.shape.is_fully_defined() for spec in
                    tf.nest.flatten(iterator.element_spec)):
                return fallback(iterator)
            has_value, batches, count = next_batches(iterator)
            if not bool(has_value):
                raise StopIteration
            return run_steps(batches, count)

        super().make_train_function(force=True)
        fallback = self.train_function
        function.fused_steps = steps
        self.train_function = function
        return self.train_function

    def train_step(self, data):
        episode = self._check_episode(data)
        # Before the update: the pass reads the meta-weights.
        pre_losses = self._maybe_pre_adaptation_pass(episode)
        meta_loss, grads, outputs, _ = self._meta_gradients(episode)
        variables = self._meta_variables()
        quantity = _first_nonfinite(
            pre_losses, outputs["losses"][:, 1:], [meta_loss, *grads],
        )

        quantity = _agree_on_quantity(quantity)
        ok = tf.equal(quantity, 0)
        state = self._state_after_step(outputs["non_trainable"])

        def apply(grads, state):
            self.optimizer.apply(grads, variables)
            self._assign_state(state)

        # One device: tf.cond. Under a strategy: apply, then undo unless ok
        # (see km_distribute.apply_if for why).
        km_distribute.apply_if(ok, apply, (grads, state), undo=(
            list(self.optimizer.variables) + variables
            + list(self.model.non_trainable_variables)))
        km_distribute.assign_replicated_many(
            [self.skipped_steps, self.consecutive_skipped_steps,
             self.nonfinite_quantity],
            [self.skipped_steps + tf.cast(tf.logical_not(ok), tf.int64),
             tf.where(ok, tf.constant(0, tf.int64),
                      self.consecutive_skipped_steps + 1),
             tf.where(ok, self.nonfinite_quantity, quantity)])
        self._meta_loss_tracker.update_state(meta_loss)
        self._update_query_metrics(episode, outputs)
        return self._logs(training=True)

    @staticmethod
    def _state_after_step(stacked_state):
        """Moving statistics after a meta-step: the mean over tasks (over
        all replicas' tasks under a strategy)."""
        ctx = tf.distribute.get_replica_context()
        values = []
        for value in stacked_state:
            if value.dtype.is_floating:
                value = tf.reduce_mean(value, axis=0)
                if tf.distribute.has_strategy() and ctx is not None:
                    value = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, value)
                values.append(value)
            else:  # e.g. a dropout seed: any task's value will do.
                values.append(value[0])
        return values

    def _assign_state(self, values):
        for variable, value in zip(self.model.non_trainable_variables, values):
            km_distribute.assign_replicated(variable, value)

    def _logs(self, training=False):
        left_out = {id(m) for m in self._step_loss_trackers}
        if not self._pre_adaptation_interval:
            left_out |= {id(m) for m in (self._pre_loss_tracker,
                                         *self._pre_metrics)}
        logs = {m.name: m.result() for m in self.metrics
                if not (training and id(m) in left_out)}
        if training:
            logs["skipped_steps"] = self.skipped_steps.value
            logs["consecutive_skipped_steps"] = (
                self.consecutive_skipped_steps.read_value()
            )
        return km_distribute.keras_logs(logs)

    def test_step(self, data):
        episode = self._check_episode(data)
        steps = self._eval_steps(None)
        _, _, outputs, _ = self._run_episode(
            episode,
            steps,
            training=self.transductive,
            second_order=False,
            record_steps=range(steps + 1),
        )
        self._meta_loss_tracker.update_state(
            tf.reduce_mean(outputs["losses"][:, -1])
        )
        for k, tracker in enumerate(self._step_loss_trackers, start=1):
            tracker.update_state(tf.reduce_mean(outputs["losses"][:, k]))
        self._update_query_metrics(episode, outputs)
        return self._logs()

    def _eval_steps(self, steps):
        if steps is not None:
            _check_positive_int("steps", steps)
            return steps
        return self.eval_inner_steps or self.inner_steps

    def call(self, inputs, training=None):
        """Episode dict -> post-adaptation query predictions; else a forward
        pass of the wrapped model with the meta-learned weights."""
        if isinstance(inputs, dict):
            episode = self._check_episode(inputs)
            _, _, outputs, _ = self._run_episode(
                episode,
                self._eval_steps(None),
                training=self.transductive,
                second_order=False,
                record_steps=(),
            )
            return outputs["post_pred"]
        return self.model(inputs, training=training)

    # ------------------------------------------------------------ adaptation

    def task_results(self, episode, steps=None):
        """Per-task query losses after 0..steps inner steps, and predictions.

        Args:
            episode: an episode dict with a task axis.
            steps: inner steps; defaults to `eval_inner_steps`.

        Returns:
            A dict: `losses`, float [tasks, steps + 1], column k the query
            loss after k inner steps (column 0 before adaptation);
            `predictions`, the query predictions after `steps` steps,
            [tasks, queries, ...].
        """
        self._require_compiled("task_results")
        episode = self._check_episode(episode)
        steps = self._eval_steps(steps)
        key = ("task_results", steps)
        fn = self._compiled_fns().get(key)
        if fn is None:

            def run(episode):
                _, _, outputs, _ = self._run_episode(
                    episode, steps, training=self.transductive,
                    second_order=False, record_steps=range(steps + 1),
                )
                return {"losses": outputs["losses"],
                        "predictions": outputs["post_pred"]}

            fn = tf.function(run, jit_compile=bool(self.jit_compile))
            self._compiled_fns()[key] = fn
        return fn(episode)

    def task_losses(self, episode, steps=None):
        """The `losses` of `task_results`: [tasks, steps + 1]."""
        return self.task_results(episode, steps)["losses"]

    def inner_update_norms(self, episode, steps=None):
        """Size of each inner step's update, per task.

        Args:
            episode: an episode dict with a task axis.
            steps: inner steps; defaults to `eval_inner_steps`.

        Returns:
            float [tasks, steps]: column k is the root mean square, over
            the adapted coordinates, of the change the inner rule made in
            step k + 1.
        """
        self._require_compiled("inner_update_norms")
        episode = self._check_episode(episode)
        steps = self._eval_steps(steps)
        key = ("inner_update_norms", steps)
        fn = self._compiled_fns().get(key)
        if fn is None:
            size = sum(int(v.shape.num_elements())
                       for v in self.adapted_variables)

            def one_task(params, rates, state, task):
                previous = [[params[i] for i in self._adapted_indices]]
                norms = []

                def on_step(step, fast):
                    current = [fast[i] for i in self._adapted_indices]
                    norms.append(tf.sqrt(tf.add_n([
                        tf.reduce_sum(tf.square(c - p))
                        for c, p in zip(current, previous[0])
                    ]) / size))
                    previous[0] = current

                self._adapt_one_task(
                    params, rates, state, task["support_x"],
                    task["support_y"], steps, training=self.transductive,
                    second_order=False, on_step=on_step,
                )
                return tf.stack(norms)

            def run(episode):
                values = [
                    [tf.convert_to_tensor(v) for v in variables]
                    for variables in (self.model.trainable_variables,
                                      self.inner_optimizer_variables,
                                      self.model.non_trainable_variables)
                ]
                dtype = self.adapted_variables[0].dtype
                return tf.map_fn(
                    lambda task: one_task(*values, task), episode,
                    fn_output_signature=tf.TensorSpec([steps], dtype),
                )

            fn = tf.function(run)
            self._compiled_fns()[key] = fn
        return fn(episode)

    def adapt(self, support_x, support_y, steps=None):
        """Adapts to one task and returns a plain, adapted `keras.Model`.

        The meta-learned weights are untouched.

        Args:
            support_x: one task's support inputs, shape [n, *input_shape]
                (no task axis).
            support_y: its targets, shape [n, *target_shape].
            steps: inner steps; defaults to `eval_inner_steps`.

        Returns:
            A clone of the wrapped model holding the adapted weights.
        """
        self._require_compiled("adapt")
        steps = self._eval_steps(steps)
        support_x = tf.convert_to_tensor(support_x)
        support_y = tf.convert_to_tensor(support_y)
        self._check_support(support_x, support_y)
        key = ("adapt", steps)
        fn = self._compiled_fns().get(key)
        if fn is None:

            def run(support_x, support_y):
                params = [
                    tf.convert_to_tensor(v)
                    for v in self.model.trainable_variables
                ]
                rates = [
                    tf.convert_to_tensor(v)
                    for v in self.inner_optimizer_variables
                ]
                state = [
                    tf.convert_to_tensor(v)
                    for v in self.model.non_trainable_variables
                ]
                return self._adapt_one_task(
                    params, rates, state, support_x, support_y, steps,
                    training=self.transductive, second_order=False,
                )

            fn = tf.function(run)
            self._compiled_fns()[key] = fn
        fast = fn(support_x, support_y)
        adapted = keras.models.clone_model(self.model)
        for variable, value in zip(adapted.trainable_variables, fast):
            variable.assign(value)
        for variable, value in zip(
            adapted.non_trainable_variables, self.model.non_trainable_variables
        ):
            variable.assign(value)
        return adapted

    def _check_support(self, support_x, support_y):
        input_shape = self.model.inputs[0].shape if getattr(
            self.model, "inputs", None
        ) else None
        if input_shape is not None and (
            len(support_x.shape) != len(input_shape)
            or any(
                a is not None and a != b
                for a, b in zip(input_shape[1:], support_x.shape[1:])
            )
        ):
            raise ValueError(
                "adapt() takes one task's support set without a task axis: "
                f"support_x should have shape [n, {', '.join(map(str, input_shape[1:]))}]"
                f" for this model; got shape {tuple(support_x.shape)}."
            )
        if len(support_y.shape) < 1 or support_x.shape[0] != support_y.shape[0]:
            raise ValueError(
                "support_x and support_y must have the same number of "
                f"examples; got shapes {tuple(support_x.shape)} and "
                f"{tuple(support_y.shape)}."
            )

    def _require_compiled(self, what):
        if not self.compiled:
            raise ValueError(
                f"Call compile() (for its loss) before {what}(); a loaded "
                "MAML model is compiled if it was saved compiled."
            )

    def _compiled_fns(self):
        # A plain dict kept out of Keras's attribute tracking.
        fns = self.__dict__.get("_km_compiled_fns")
        if fns is None:
            fns = {}
            object.__setattr__(self, "_km_compiled_fns", fns)
        return fns

    # ------------------------------------------------------------ saving

    def _seed_states(self):
        """The wrapped model's random-seed states (dropout and the like).

        Keras does not write `SeedGenerator` states to `.keras` files; MAML
        does, so that a run resumed from a checkpoint draws the same random
        numbers as one that never stopped.
        """
        return [v for v in self.model.variables
                if "seed_generator_state" in v.path]

    def save_own_variables(self, store):
        super().save_own_variables(store)
        for j, variable in enumerate(self._seed_states()):
            store[f"seed_state_{j}"] = variable

    def load_own_variables(self, store):
        own = self._trainable_variables + self._non_trainable_variables
        names = [str(k) for k in store.keys()]
        seeds = sorted(n for n in names if n.startswith("seed_state_"))
        if len(names) - len(seeds) != len(own):
            raise ValueError(
                f"The saved {type(self).__name__} has "
                f"{len(names) - len(seeds)} variables of its own, this one "
                f"{len(own)} ({[v.name for v in own]}).")
        for i, variable in enumerate(own):
            variable.assign(store[f"{i}"])
        # Files without seed states (keras_meta 0.1.0) keep the fresh ones.
        states = self._seed_states()
        if len(seeds) == len(states):
            for j, variable in enumerate(states):
                variable.assign(store[f"seed_state_{j}"])

    # ------------------------------------------------------------ config

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "model": serialization_lib.serialize_keras_object(self.model),
                "inner_learning_rate": self.inner_learning_rate,
                "inner_steps": self.inner_steps,
                "first_order": self.first_order,
                "eval_inner_steps": self.eval_inner_steps,
                "learn_inner_rates": self.learn_inner_rates,
                "inner_optimizer": serialization_lib.serialize_keras_object(
                    self.inner_optimizer
                ),
                "multi_step_loss": self.multi_step_loss,
                "multi_step_loss_anneal_steps": (
                    self.multi_step_loss_anneal_steps
                ),
                "adapted_layers": self.adapted_layers,
                "transductive": self.transductive,
                "task_parallelism": self.task_parallelism,
                "max_consecutive_skips": self.max_consecutive_skips,
                "track_pre_adaptation": self.track_pre_adaptation,
            }
        )
        return saving.stamp(config)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = serialization_lib.deserialize_keras_object(
            config["model"]
        )
        return saving.build(cls, config)

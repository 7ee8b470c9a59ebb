"""MAML and its variants as Keras models.

`model.MAML` is the `keras.Model`; the variants are small subclasses
(`MetaSGD`, `MAMLPlusPlus`, `ANIL`, `ProtoMAML`). The modules beside it
each hold one idea: `tasks` (one task's inner loop and query pass, through
`keras_meta.rules.inner_loop.unroll`), `task_parallel` (how a meta-batch's
tasks run; `batched_dense` for Dense stacks), `meta_gradients`,
`multi_step_loss` (MAML++'s MSL), `skipping` (non-finite meta-steps),
`losses_and_metrics`, `checks` (arguments and data), `batch_norm`,
`adaptation` (`adapt` and friends), `fused_xla` (the overrides of Keras
trainer internals) and `seed_states`.
"""

from keras_meta.maml.anil import ANIL
from keras_meta.maml.inner_rules import InnerLSTM
from keras_meta.maml.inner_rules import InnerOptimizer
from keras_meta.maml.inner_rules import InnerSGD
from keras_meta.maml.maml_plus_plus import MAMLPlusPlus
from keras_meta.maml.meta_sgd import MetaSGD
from keras_meta.maml.model import MAML
from keras_meta.maml.proto_maml import ProtoMAML

"""The applications built on keras_meta, beside their entry scripts.

`maml/`, `learned_optimizer/` and `sweeps/` hold the logic of
`train_maml.py`, `train_learned_optimizer.py` and `sweep.py`; each has one
config from which its flags come (`config_flags`). Not installed with the
package; importable from the repository root.
"""

"""Hyperparameter sweeps over the training applications, with the
TensorBoard HParams dashboard: the logic of examples/sweep.py."""

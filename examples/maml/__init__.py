"""Meta-training MAML and its variants: the logic of examples/train_maml.py.

`config` (the settings, their flags and the task defaults), `tasks` (the
task families) and `train` (building, training, evaluating).
"""

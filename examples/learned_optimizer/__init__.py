"""Meta-training the LSTM learned optimizer: the logic of
examples/train_learned_optimizer.py (`config` and `train`)."""

"""Exceptions keras_meta raises on its own account."""

# What a skipped MAML meta-step found non-finite, checked in this order;
# the index is stored in `MAML.nonfinite_quantity`.
NONFINITE_QUANTITIES = (
    "nothing",
    "query loss before adaptation (the model's outputs or the data)",
    "query loss after adaptation (the inner loop diverged; a lower "
    "inner_learning_rate or fewer inner_steps may help)",
    "meta-gradient",
)


class NonFiniteError(FloatingPointError):
    """Training kept producing non-finite values and was stopped.

    Raised by `keras_meta.callbacks.NonFiniteGuard` (added to `MAML.fit`
    automatically) and by the learned-optimizer meta-trainer after a number
    of consecutive skipped steps. Skipped steps leave the weights as they
    were; the message says whether they are still finite (`weights_state`).

    Attributes:
        step: the step count at which training stopped.
        quantity: what was not finite, e.g. "meta-gradient".
    """

    def __init__(self, message, step=None, quantity=None):
        super().__init__(message)
        self.step = step
        self.quantity = quantity


def weights_state(finite, what="the weights"):
    """Words for a `NonFiniteError` message: whether `what` still hold
    finite values (`finite`), which is true only if no applied update made
    them non-finite."""
    if finite:
        return f"{what} hold their last finite values"
    return (f"{what} are NOT finite (an applied update overflowed, or "
            "they were set so); restore them from a checkpoint")


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint.

    Raised by the training applications (`examples/maml/train.py` and
    `examples/learned_optimizer/train.py`) so that a script exits instead
    of evaluating a half-trained model; rerun with `--resume` to continue.

    Attributes:
        signum: the signal number (e.g. `signal.SIGTERM`).
        step: the step count saved in the checkpoint.
        checkpoint: the checkpoint's path.
    """

    def __init__(self, signum, step, checkpoint):
        super().__init__(
            f"Training interrupted by signal {signum} at step {step}; "
            f"checkpoint written to {checkpoint}. Rerun with --resume to "
            "continue."
        )
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint

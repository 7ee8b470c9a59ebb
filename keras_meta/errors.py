"""Exceptions keras_meta raises on its own account."""


class NonFiniteError(FloatingPointError):
    """Training kept producing non-finite values and was stopped.

    Raised by `keras_meta.callbacks.NonFiniteGuard` (added to `MAML.fit`
    automatically) and by the learned-optimizer meta-trainer after a number
    of consecutive skipped steps. The weights hold their last finite values.

    Attributes:
        step: the step count at which training stopped.
        quantity: what was not finite, e.g. "meta-gradient".
    """

    def __init__(self, message, step=None, quantity=None):
        super().__init__(message)
        self.step = step
        self.quantity = quantity

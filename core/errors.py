"""Errors the training core raises on purpose; the worker reports their message to the user."""


class TrainingError(Exception):
    """A job cannot train as specified (bad device, diverged loss, unreadable checkpoint)."""


class NonFiniteLoss(TrainingError):
    """The training loss became NaN or infinite."""

    def __init__(self, value: float, epoch: int, step: int) -> None:
        self.value, self.epoch, self.step = value, epoch, step
        kind = "NaN" if value != value else "infinite"
        super().__init__(
            f"loss became {kind} at epoch {epoch}, step {step}: "
            "lower the learning rate or clip gradients"
        )

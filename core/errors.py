"""Errors the training core raises on purpose; the worker reports their message to the user."""

from __future__ import annotations

from typing import Any


class TrainingError(Exception):
    """A job cannot train as specified (bad device, diverged loss, unreadable checkpoint)."""


class NonFiniteLoss(TrainingError):
    """The training loss became NaN or infinite."""

    def __init__(self, value: float, epoch: int, step: int) -> None:
        self.value, self.epoch, self.step = value, epoch, step
        # The trainer sets the job's final diagnosis (exploding gradients) before raising.
        self.diagnosis: dict[str, Any] | None = None
        kind = "NaN" if value != value else "infinite"
        super().__init__(
            f"loss became {kind} at epoch {epoch}, step {step}: "
            "lower the learning rate or clip gradients"
        )


class InvalidUpload(ValueError):
    """An uploaded dataset or weights file is refused; the message says why (shown to the
    user, who sent the file)."""

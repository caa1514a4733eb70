"""Learning-rate schedules, one lr per epoch.

A schedule is a function of the epoch (1-based) and, for reduce-on-plateau, of the monitored
values seen so far; the training loop asks for the epoch's lr and writes it into the optimizer's
parameter groups before the epoch, nanoGPT's get_lr(it) style. The formulas use t = epoch − 1,
the number of epochs already completed, so the first epoch trains at η₀.
"""

from __future__ import annotations

import math
from typing import Any

from core.spec import JobSpec


class Schedule:
    def __init__(self, spec: JobSpec) -> None:
        assert spec.optimizer.lr is not None
        self.base_lr = spec.optimizer.lr
        self.spec = spec.schedule
        self.epochs = spec.training.epochs
        # reduce_on_plateau state: the current multiplier and the plateau bookkeeping.
        self.scale = 1.0
        self.best: float | None = None
        self.wait = 0

    def lr(self, epoch: int) -> float:
        s, eta0, t = self.spec, self.base_lr, epoch - 1
        if s.name == "inverse_time":
            return eta0 / (1 + s.decay * t)
        if s.name == "step":
            return eta0 * s.gamma ** (t // s.step_size)
        if s.name == "exponential":
            return eta0 * s.gamma**t
        if s.name == "cosine":
            t_max = s.t_max or self.epochs
            return (
                s.min_lr + (eta0 - s.min_lr) * (1 + math.cos(math.pi * min(t, t_max) / t_max)) / 2
            )
        if s.name == "warmup":
            if t >= s.warmup_epochs:
                return eta0
            return eta0 * (s.start_factor + (1 - s.start_factor) * t / s.warmup_epochs)
        if s.name == "reduce_on_plateau":
            return max(eta0 * self.scale, s.min_lr)
        return eta0

    def observe(self, metrics: dict[str, float]) -> None:
        """Feed an epoch's metrics; only reduce_on_plateau reacts."""
        s = self.spec
        if s.name != "reduce_on_plateau":
            return
        value = metrics[s.monitor]
        sign = 1.0 if s.mode == "min" else -1.0
        if self.best is None or sign * (self.best - value) > s.threshold:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait > s.patience:
            self.scale *= s.factor
            self.wait = 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.best, self.wait = state["scale"], state["best"], state["wait"]

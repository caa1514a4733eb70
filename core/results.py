"""What a training run reports: per-epoch records and the final result (no torch here)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

StopReason = Literal["max_epochs", "early_stopping", "cancelled"]


def _finite_or_none(value: float | None) -> float | None:
    # JSON has no NaN or infinity.
    return value if value is not None and math.isfinite(value) else None


@dataclass
class StopInfo:
    reason: StopReason
    rule: (
        str | None
    )  # early stopping: patience | stopping_threshold | divergence_threshold | non_finite
    epoch: int
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StopInfo:
        return cls(**data)


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    metrics: dict[str, float]
    monitor: str
    value: float  # the monitored metric this epoch
    is_best: bool  # this epoch is the best of the run so far
    best_epoch: int
    best_value: float
    wait: int  # epochs since the last improvement (the patience counter)
    stop: StopInfo | None = None  # set when this epoch triggers a stop
    # core.diagnosis.diagnose() of the run so far (final=False); JSON-ready. In long runs it is
    # recomputed every few epochs only, and its "epoch" says which epoch it describes.
    diagnosis: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "metrics": {k: _finite_or_none(v) for k, v in self.metrics.items()},
            "monitor": self.monitor,
            "value": _finite_or_none(self.value),
            "is_best": self.is_best,
            "best_epoch": self.best_epoch,
            "best_value": _finite_or_none(self.best_value),
            "wait": self.wait,
            "stop": self.stop.to_dict() if self.stop else None,
            "diagnosis": self.diagnosis,
        }


@dataclass
class FitResult:
    status: Literal["succeeded", "cancelled"]
    stop: StopInfo
    monitor: str
    mode: str
    best_epoch: int  # 0 when no epoch finished
    best_value: float | None
    last_epoch: int
    last_value: float | None
    epochs_run: (
        int  # epochs completed by this call of train() (fewer than last_epoch after a resume)
    )
    history: list[EpochRecord] = field(default_factory=list, repr=False)
    diagnosis: dict[str, Any] | None = None  # the final diagnosis (final=True), JSON-ready
    warnings: list[str] = field(default_factory=list)  # e.g. batch norm on small batches
    # {"trainable": n, "frozen": m} at the end (a frozen backbone's parameters are frozen).
    parameters: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "stop": self.stop.to_dict(),
            "monitor": self.monitor,
            "mode": self.mode,
            "best_epoch": self.best_epoch,
            "best_value": _finite_or_none(self.best_value),
            "last_epoch": self.last_epoch,
            "last_value": _finite_or_none(self.last_value),
            "epochs_run": self.epochs_run,
            "diagnosis": self.diagnosis,
            "warnings": list(self.warnings),
            "parameters": self.parameters,
        }

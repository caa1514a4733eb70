"""Early stopping and best-epoch tracking (plain Python, no torch)."""

from __future__ import annotations

import math
from typing import Any

from core.results import StopInfo
from core.spec import EarlyStoppingSpec


class EarlyStopping:
    """Watch one metric; decide when training should stop; remember the best epoch of the run.

    Rules, checked in this order after every epoch:
      non_finite            the value is NaN or ±inf (check_finite) — fires at any epoch
      stopping_threshold    the value is at least as good as the threshold: good enough
      divergence_threshold  the value is at least as bad as the threshold: hopeless
      patience              no improvement larger than min_delta for `patience` epochs
    min_epochs holds back the last three until that many epochs have run.

    Two "bests" are kept apart on purpose. best_value/best_epoch is the best value of the
    whole run (what the best checkpoint should hold); patience counts from the last
    *significant* improvement (better than that reference by more than min_delta), so a run
    creeping down by less than min_delta per epoch still runs out of patience.

    With stopping=False (the spec has no early_stopping) it only tracks the best epoch.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "min",
        patience: int = 5,
        min_delta: float = 0.0,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        min_epochs: int = 0,
        check_finite: bool = True,
        stopping: bool = True,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        self.monitor, self.mode = monitor, mode
        self.patience, self.min_delta = patience, min_delta
        self.stopping_threshold, self.divergence_threshold = (
            stopping_threshold,
            divergence_threshold,
        )
        self.min_epochs, self.check_finite, self.stopping = min_epochs, check_finite, stopping
        self.best_value = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.reference = self.best_value  # value at the last significant improvement
        self.wait = 0

    @classmethod
    def from_spec(cls, spec: EarlyStoppingSpec | None) -> EarlyStopping:
        if spec is None:
            # Still track the best epoch by validation loss, for the best checkpoint.
            return cls("val_loss", "min", check_finite=False, stopping=False)
        assert spec.mode is not None  # filled by the spec's validator
        return cls(
            spec.monitor,
            spec.mode,
            patience=spec.patience,
            min_delta=spec.min_delta,
            stopping_threshold=spec.stopping_threshold,
            divergence_threshold=spec.divergence_threshold,
            min_epochs=spec.min_epochs,
            check_finite=spec.check_finite,
        )

    def _better(self, a: float, b: float, margin: float = 0.0) -> bool:
        """a is better than b by more than margin."""
        return a < b - margin if self.mode == "min" else a > b + margin

    def update(self, epoch: int, value: float) -> tuple[bool, StopInfo | None]:
        """Record the epoch's value; return (is_best, stop decision or None)."""
        is_best = self._better(value, self.best_value)  # NaN compares False: never best
        if is_best:
            self.best_value, self.best_epoch = value, epoch
        if self._better(value, self.reference, self.min_delta):
            self.reference, self.wait = value, 0
        else:
            self.wait += 1
        if not self.stopping:
            return is_best, None
        return is_best, self._decide(epoch, value)

    def _decide(self, epoch: int, value: float) -> StopInfo | None:
        def stop(rule: str, detail: str) -> StopInfo:
            return StopInfo("early_stopping", rule, epoch, detail)

        name = self.monitor
        if self.check_finite and not math.isfinite(value):
            return stop("non_finite", f"{name} is {value} at epoch {epoch}")
        if epoch < self.min_epochs:
            return None
        worse_or_equal = "<=" if self.mode == "min" else ">="
        threshold = self.stopping_threshold
        if threshold is not None and (
            value == threshold or self._better(value, threshold)
        ):  # NaN never
            return stop(
                "stopping_threshold",
                f"{name} {value:.6g} {worse_or_equal} stopping threshold {threshold:g}",
            )
        if self.divergence_threshold is not None and not self._better(
            value, self.divergence_threshold
        ):  # NaN does
            op = ">=" if self.mode == "min" else "<="
            return stop(
                "divergence_threshold",
                f"{name} {value:.6g} {op} divergence threshold {self.divergence_threshold:g}",
            )
        if self.wait >= self.patience and self.wait > 0:
            return stop("patience", f"no improvement > {self.min_delta} for {self.wait} epochs")
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "reference": self.reference,
            "wait": self.wait,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.reference, self.wait = state["reference"], state["wait"]

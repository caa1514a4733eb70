"""Wire shapes of a study: the request (StudySpec) and the answers."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.spec import MAX_EPOCHS, Mode, Monitor

TrialStatusName = Literal["queued", "running", "succeeded", "pruned", "failed", "cancelled"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ObjectiveSpec(_Strict):
    metric: Monitor = "val_loss"
    mode: Mode | None = None  # default: min for losses, max for accuracies


class PrunerSpec(_Strict):
    """When to stop a hopeless trial early (Optuna's pruners), decided as each epoch ends.

    - median: its best value so far is worse than the median of the finished trials at the
      same epoch (once `min_trials` trials finished; not before epoch `min_epochs`);
    - asha: successive halving: at epochs min_epochs × reduction_factor^k (the rungs) only
      the top 1/reduction_factor of the trials that reached the rung go on;
    - hyperband: several successive-halving brackets of different aggressiveness.
    """

    name: Literal["none", "median", "asha", "hyperband"] = "none"
    min_epochs: int = Field(1, ge=1, le=MAX_EPOCHS)
    reduction_factor: int = Field(3, ge=2, le=100)
    min_trials: int = Field(5, ge=0, le=1_000)


class StudySpec(_Strict):
    """A study: trials made from `base`, each with a point of `space` set at its paths.

    `space` maps dotted job-spec paths to distributions: `{choice: [...]}` (any JSON values;
    a choice of objects is merged at its path, and distributions inside an option are
    sampled only when it is chosen), `{uniform: [a, b]}`, `{loguniform: [a, b]}`,
    `{int: [a, b], step: 1, log: false}`.
    """

    name: str | None = Field(None, max_length=200)
    base: dict[str, Any]
    space: dict[str, Any]
    # Default: the base's early-stopping monitor and mode (val_loss, min without one).
    objective: ObjectiveSpec | None = None
    algorithm: Literal["grid", "random", "tpe"] = "tpe"
    max_trials: int = Field(20, ge=1, le=1_000)
    # Trials queued or running at once (the owner's limit of jobs at once applies too).
    parallelism: int = Field(2, ge=1, le=100)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)


class TrialCounts(BaseModel):
    total: int
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    pruned: int = 0
    failed: int = 0
    cancelled: int = 0


class TrialPublic(BaseModel):
    number: int
    job_id: str
    status: TrialStatusName
    params: dict[str, Any]
    # The best value of the objective over the trial's epochs, and that epoch.
    value: float | None
    epoch: int | None
    epochs: int  # epochs trained
    checkpoint_id: str | None
    stop: dict[str, Any] | None
    created_at: datetime


class TrialsPublic(BaseModel):
    items: list[TrialPublic]
    next: str | None


class EpochsPublic(BaseModel):
    """Epochs trained by the trials, against what running each to its end would cost
    (a pruned trial counted at its spec's training.epochs)."""

    trained: int
    without_pruning: int
    saved: int


class StudyPublic(BaseModel):
    id: str
    name: str | None
    status: Literal["running", "completed", "cancelled"]
    created_at: datetime
    finished_at: datetime | None
    algorithm: str
    objective: dict[str, Any]
    max_trials: int
    parallelism: int
    seed: int
    pruner: dict[str, Any]
    grid_size: int | None
    trials: TrialCounts
    best: TrialPublic | None
    epochs: EpochsPublic
    space: dict[str, Any]
    base: dict[str, Any]


class StudiesPublic(BaseModel):
    items: list[StudyPublic]
    next: str | None


class ImportancePublic(BaseModel):
    """{parameter: importance}, summing to 1, most important first."""

    params: dict[str, float]
    trials: int
    evaluator: str

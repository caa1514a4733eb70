"""Wire shapes of a job. The request body of a submit is ``core.spec.JobSpec`` itself."""

from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.encoding import as_utc, finite, json_safe
from core.spec import JobSpec
from store.models import Job

M = TypeVar("M", bound=BaseModel)
JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class BestPublic(BaseModel):
    """The best epoch so far by the monitored metric (epoch and value null until one ends)."""

    epoch: int | None
    metric: str
    mode: str
    value: float | None
    checkpoint_id: str | None


class LastPublic(BaseModel):
    """The last finished epoch and its monitored value."""

    epoch: int
    value: float | None


class StopPublic(BaseModel):
    """Why the job stopped (null while it runs)."""

    model_config = ConfigDict(extra="allow")

    reason: str = Field(
        description="max_epochs, early_stopping, max_runtime, cancelled or error (and "
        "whatever reason a failure names)"
    )
    rule: str | None = Field(
        None,
        description="For early_stopping: patience, stopping_threshold, divergence_threshold "
        "or non_finite",
    )
    epoch: int = Field(description="The last epoch run")
    detail: str = Field(description="The reason in words")
    failure: str | None = Field(None, description="For a failed job: its failure class")


class FindingPublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    verdict: str
    summary: str
    evidence: dict[str, Any]


class RegularizationPublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    regularizers: list[str]
    stopping_rule: str | None = None
    note: str | None = None


class DiagnosisPublic(BaseModel):
    """The fit diagnosis of the epochs so far (see core/diagnosis.py)."""

    model_config = ConfigDict(extra="allow")

    verdict: str = Field(
        description="exploding_gradients, vanishing_gradients, overfitting, underfitting, "
        "val_below_train, good_fit or too_early"
    )
    summary: str
    evidence: dict[str, Any] = Field(description="The epochs and numbers behind the verdict")
    remedies: list[str]
    gap: list[float | None] = Field(
        [], description="val_loss - train_loss of each epoch (null where one is missing)"
    )
    findings: list[FindingPublic] = Field([], description="Every finding that applies")
    shared_samples: int | None = None
    majority_baseline: float | None = None
    epoch: int | None = Field(None, description="Epochs the diagnosis covers")
    final: bool | None = Field(None, description="Whether the job had ended")
    regularization: RegularizationPublic | None = None


class JobPublic(BaseModel):
    id: str
    name: str | None
    status: JobStatusName
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    epoch: int
    best: BestPublic
    last: LastPublic
    stop: StopPublic | None
    error: str | None
    diagnosis: DiagnosisPublic | None
    warnings: list[str]
    parameters: dict[str, int] | None
    cancel_requested: bool
    attempt: int
    # Seconds of training so far, over all attempts (what counts against a compute budget).
    runtime_seconds: float
    # The most device (CUDA) memory the job's training held at once, over all its attempts,
    # in bytes; null until a CUDA epoch ends (CPU jobs have none). With training.processes
    # above 1, rank 0's GPU.
    peak_memory_bytes: int | None = None
    queue: str
    spec_hash: str
    spec: JobSpec
    # A study's trial: its study and the parameters it was given (null for other jobs).
    study_id: str | None = None
    params: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, job: Job) -> "JobPublic":
        created_at = as_utc(job.created_at)
        assert created_at is not None
        return cls(
            id=job.id,
            name=job.name,
            status=job.status,
            created_at=created_at,
            started_at=as_utc(job.started_at),
            finished_at=as_utc(job.finished_at),
            epoch=job.epoch,
            best=BestPublic(
                epoch=job.best_epoch,
                metric=job.monitor,
                mode=job.mode,
                value=finite(job.best_value),
                checkpoint_id=job.best_checkpoint_id,
            ),
            last=LastPublic(epoch=job.epoch, value=finite(job.last_value)),
            stop=_typed(StopPublic, json_safe(job.stop)),
            error=job.error,
            diagnosis=_typed(DiagnosisPublic, json_safe(job.diagnosis)),
            warnings=job.warnings or [],
            parameters=job.parameters,
            cancel_requested=job.cancel_requested,
            attempt=job.attempt,
            runtime_seconds=job.runtime_seconds or 0.0,
            peak_memory_bytes=job.peak_memory_bytes,
            queue=job.queue,
            spec_hash=job.spec_hash,
            spec=_spec(job.spec),
            # As loaded with the row (never a lazy load: the row may be detached).
            study_id=vars(job).get("study_id"),
            params=json_safe(vars(job).get("params")),
        )


class JobsPublic(BaseModel):
    items: list[JobPublic]
    next: str | None


def _spec(stored: dict[str, Any]) -> JobSpec:
    """The stored spec (validated at submit). One stored before a bound was tightened is
    served as it was, not refused."""
    spec = _typed(JobSpec, stored)
    assert spec is not None
    return spec


def _typed(model: type[M], stored: dict[str, Any] | None) -> M | None:
    """A stored JSON value as its model; a row written before the model changed is served
    as it is rather than failing the request."""
    if stored is None:
        return None
    try:
        return model.model_validate(stored)
    except ValidationError:
        return model.model_construct(**stored)

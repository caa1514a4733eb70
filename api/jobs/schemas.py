"""Wire shapes of a job. The request body of a submit is ``core.spec.JobSpec`` itself."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from api.encoding import as_utc, finite, json_safe
from store.models import Job

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
    stop: dict[str, Any] | None
    error: str | None
    diagnosis: dict[str, Any] | None
    warnings: list[str]
    parameters: dict[str, int] | None
    cancel_requested: bool
    attempt: int
    # Seconds of training so far, over all attempts (what counts against a compute budget).
    runtime_seconds: float
    queue: str
    spec_hash: str
    spec: dict[str, Any]

    @classmethod
    def from_row(cls, job: Job) -> "JobPublic":
        created_at = as_utc(job.created_at)
        assert created_at is not None
        return cls(
            id=job.id,
            name=job.name,
            status=job.status,  # type: ignore[arg-type]
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
            stop=json_safe(job.stop),
            error=job.error,
            diagnosis=json_safe(job.diagnosis),
            warnings=job.warnings or [],
            parameters=job.parameters,
            cancel_requested=job.cancel_requested,
            attempt=job.attempt,
            runtime_seconds=job.runtime_seconds or 0.0,
            queue=job.queue,
            spec_hash=job.spec_hash,
            spec=json_safe(job.spec),
        )


class JobsPublic(BaseModel):
    items: list[JobPublic]
    next: str | None

"""Jobs: every query and state change behind the job routes."""

import base64
import binascii
import logging
from datetime import datetime
from functools import partial
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, tuple_, update
from sqlalchemy.orm import Session

from api.db import on_commit
from api.encoding import as_utc, non_finite_paths
from api.errors import Conflict, InvalidParameter, NotFound, TooManyRequests, Unavailable
from api.queue import TaskQueue
from api.webhooks.service import notify_errors, record_status, with_default_notify
from core.spec import JobBackbone, JobSpec, warnings
from descent.queue import training_queue
from descent.settings import Settings
from store import outbox, webhooks
from store.db import session_scope
from store.models import Job, JobStatus, Upload, utcnow
from store.users import active_jobs, limits_for, used_device_hours

logger = logging.getLogger("api.jobs")


def submit_job(
    session: Session, spec: JobSpec, *, owner: str, settings: Settings, tasks: TaskQueue
) -> Job:
    """Store a queued job; it is sent to its queue once the request's transaction commits.

    ``spec`` is the body as the route parsed it; it is validated again here against the
    owner's uploads and jobs that it names (see ``with_context``).
    """
    spec = with_context(session, spec, owner=owner)
    spec_json = spec.model_dump(mode="json")
    # JSON has no NaN or infinity; the stored spec must be valid JSON for every database.
    bad = non_finite_paths(spec_json)
    if bad:
        raise InvalidParameter([(("body", *path), "must be a finite number", None) for path in bad])
    parameters = check_limits(session, spec, owner=owner, settings=settings)
    spec_json = with_default_notify(session, spec_json, owner=owner)
    stopping = spec.early_stopping
    job = Job(
        owner=owner,
        name=spec.name,
        status=JobStatus.QUEUED,
        spec=spec_json,
        spec_hash=spec.spec_hash(),
        queue=training_queue(spec.training.device, settings),
        monitor=stopping.monitor if stopping else "val_loss",
        mode=(stopping.mode if stopping else None) or "min",
        warnings=warnings(spec),
        # Counted from the spec now; the worker writes the built model's counts at its start.
        parameters=parameters,
    )
    session.add(job)
    session.flush()
    on_commit(session, partial(enqueue_job, job.id, job.queue, tasks, job.unsent_since))
    return job


def with_context(session: Session, spec: JobSpec, *, owner: str) -> JobSpec:
    """The spec validated again, knowing the uploads and the backbone job it names.

    The validation context holds the owner's own rows only: another owner's upload or job
    reads exactly as one that does not exist (422 "there is no ..."), never revealing it.
    A backbone job also brings the uploads its own spec names, which its spec is read with.
    """
    upload_ids = set(_upload_ids(spec.model_dump(mode="json")))
    jobs: dict[str, dict[str, Any]] = {}
    source: Job | None = None
    if isinstance(spec.backbone, JobBackbone):
        source = session.scalars(
            select(Job).where(Job.id == spec.backbone.from_job, Job.owner == owner)
        ).one_or_none()
        if source is not None:
            jobs[source.id] = {"status": source.status, "spec": source.spec}
            upload_ids.update(_upload_ids(source.spec))
    uploads: dict[str, dict[str, Any]] = {}
    if upload_ids:
        rows = session.execute(
            select(Upload.id, Upload.info).where(
                Upload.owner == owner, Upload.id.in_(sorted(upload_ids))
            )
        )
        uploads = {row.id: row.info for row in rows}
    try:
        checked = JobSpec.model_validate(
            spec.model_dump(mode="json"), context={"uploads": uploads, "jobs": jobs}
        )
    except ValidationError as exc:
        raise InvalidParameter.from_validation(exc) from None
    if source is not None and source.best_checkpoint_id is None:
        raise InvalidParameter.one(
            ("body", "backbone", "job", "from_job"),
            f"job {source.id!r} finished without a checkpoint: it has no encoder to take",
            source.id,
        )
    return checked


def _upload_ids(spec: dict[str, Any]) -> list[str]:
    """The uploads a stored (JSON) spec names: its dataset and its backbone's weights."""
    found = []
    dataset = spec.get("dataset") or {}
    if dataset.get("source") == "upload" and dataset.get("id"):
        found.append(str(dataset["id"]))
    weights = (spec.get("backbone") or {}).get("weights")
    if isinstance(weights, str) and weights.startswith("upload:"):
        found.append(weights.removeprefix("upload:"))
    return found


def check_limits(
    session: Session, spec: JobSpec, *, owner: str, settings: Settings
) -> dict[str, int]:
    """The owner's limits (OWASP API4): the job's size is a 422 naming the field; the
    owner's jobs at once and compute budget are a 429 saying which limit was reached.

    ``spec`` is validated with its context (with_context), so that an upload's shape and a
    backbone job's model are known. Returns the model's parameter counts.
    """
    limits = limits_for(session, owner, settings, lock=True)
    errors: list[tuple[tuple[str, ...], str, object]] = []
    if spec.training.epochs > limits.epochs:
        errors.append(
            (
                ("body", "training", "epochs"),
                f"must be at most {limits.epochs}, this account's limit",
                spec.training.epochs,
            )
        )
    counts = spec.parameter_counts()
    # A frozen backbone counts too: it may be unfrozen, and every step runs through it.
    parameters = counts["trainable"] + counts["frozen"]
    if parameters > limits.parameters:
        frozen = f", {counts['frozen']:,} of them in a frozen backbone" if counts["frozen"] else ""
        errors.append(
            (
                ("body", "model"),
                f"the model has {parameters:,} parameters{frozen}; this account's limit is "
                f"{limits.parameters:,}",
                None,
            )
        )
    errors.extend(notify_errors(spec, settings))
    if errors:
        raise InvalidParameter(errors)
    active = active_jobs(session, owner)
    if active >= limits.active_jobs:
        raise TooManyRequests(
            f"this account has {active} jobs queued or running, its limit; "
            "wait for one to end or cancel one"
        )
    if limits.device_hours is not None:
        used = used_device_hours(session, owner)
        if used >= limits.device_hours:
            raise TooManyRequests(
                f"this account's compute budget of {limits.device_hours:g} device-hours "
                f"is used up ({used:.2f} used)"
            )
        runtime = spec.training.max_runtime_seconds
        processes = spec.training.processes  # each of its ranks holds a device
        ranks = f" on {processes} processes" if processes > 1 else ""
        if runtime is not None and used + runtime * processes / 3600 > limits.device_hours:
            raise TooManyRequests(
                f"this job may train for {runtime * processes / 3600:.3f} device-hours "
                f"(training.max_runtime_seconds {runtime:g}{ranks}); this account has used "
                f"{used:.3f} of its {limits.device_hours:g} device-hours, "
                f"{limits.device_hours - used:.3f} are left"
            )
    return counts


def enqueue_job(
    job_id: str, queue: str, tasks: TaskQueue, unsent_since: datetime | None = None
) -> None:
    """Send a committed job to its queue, and record it sent (store/outbox.py: should this
    process die before that, a worker's sweeper sends it). If the broker refuses, the job
    fails (503)."""
    try:
        tasks.send_training(job_id, queue)
    except Exception as exc:  # noqa: BLE001 - any broker failure means the job is not queued
        message = f"could not queue the job: {str(exc) or exc.__class__.__name__}"
        logger.warning("job %s: %s", job_id, message)
        with session_scope() as session:
            webhooks.end_job(
                session,
                job_id,
                [Job.status == JobStatus.QUEUED],
                {"status": JobStatus.FAILED, "error": message, "finished_at": utcnow()},
            )
        raise Unavailable(message) from exc
    outbox.mark_sent(session_scope, job_id, unsent_since)


def get_job(session: Session, job_id: str, *, owner: str) -> Job:
    job = session.scalars(select(Job).where(Job.id == job_id, Job.owner == owner)).one_or_none()
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def list_jobs(
    session: Session, *, owner: str, status: str | None, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """Newest first, by (created_at, id); the cursor is the last job of the previous page."""
    query = select(Job).where(Job.owner == owner)
    if status is not None:
        query = query.where(Job.status == status)
    if cursor is not None:
        created_at, last_id = decode_cursor(cursor)
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(created_at, last_id))
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    jobs = list(session.scalars(query))
    next_cursor = encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
    return jobs[:limit], next_cursor


def encode_cursor(job: Job) -> str:
    created_at = as_utc(job.created_at)
    assert created_at is not None
    raw = f"{created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, job_id = raw.split("|", 1)
        created_at = as_utc(datetime.fromisoformat(stamp))
        if "\x00" in job_id:
            raise ValueError("NUL in the job id")  # PostgreSQL cannot compare text with NUL
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidParameter.one(("query", "cursor"), "invalid cursor", cursor) from None
    assert created_at is not None
    return created_at, job_id


def cancel_job(session: Session, job_id: str, *, owner: str) -> Job:
    """A queued job is cancelled at once; a running one is flagged for its worker to stop.

    Each change is a conditional UPDATE on the status just read, so a worker that starts or
    finishes the job meanwhile is never overwritten: the decision is then taken again.
    """
    for _ in range(3):
        job = get_job(session, job_id, owner=owner)
        if job.status == JobStatus.CANCELLED:
            return job  # cancelling twice is not an error
        if job.status in JobStatus.TERMINAL:
            raise Conflict(
                f"job {job_id} has already {job.status}; "
                "only a queued or running job can be cancelled"
            )
        if job.status == JobStatus.QUEUED:
            changes = {
                "status": JobStatus.CANCELLED,
                "cancel_requested": True,
                "finished_at": utcnow(),
                "stop": {
                    "reason": "cancelled",
                    "rule": None,
                    "epoch": 0,
                    "detail": "cancelled while queued, before training started",
                },
            }
        else:
            changes = {"cancel_requested": True}
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == job.status)
            .values(**changes)
            .execution_options(synchronize_session=False)
        )
        session.refresh(job)
        if result.rowcount:  # type: ignore[attr-defined]
            if job.status == JobStatus.CANCELLED:
                record_status(session, job)  # its webhook event (a running job's: its worker)
            return job
    raise Conflict(f"job {job_id} changed state while being cancelled; try again")

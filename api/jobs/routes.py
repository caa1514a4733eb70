"""Job routes: parse, call one service function, shape the answer."""

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import CurrentOwner, SessionDep, SettingsDep, TaskQueueDep
from api.jobs import service
from api.jobs.schemas import JobPublic, JobsPublic, JobStatusName
from core.spec import JobSpec

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such job"}}


@router.post(
    "",
    status_code=201,
    responses={
        400: {"description": "A body that cannot be parsed (not UTF-8 text)"},
        413: {"description": "Body over the size limit"},
        429: {"description": "This account's limit on jobs at once or its compute budget"},
        503: {"description": "The job could not be queued (it is stored as failed)"},
    },
)
def submit_job(
    spec: JobSpec,
    session: SessionDep,
    owner: CurrentOwner,
    settings: SettingsDep,
    tasks: TaskQueueDep,
) -> JobPublic:
    """Validate a job spec, store the job as queued and send it to a worker queue.

    The uploads (`dataset: {source: upload, id}`, `backbone.weights: "upload:<id>"`) and the
    backbone job (`backbone.from_job`) a spec names must be your own, and must fit: a
    backbone job must have succeeded, and its encoder must take this dataset's inputs.
    """
    job = service.submit_job(session, spec, owner=owner, settings=settings, tasks=tasks)
    return JobPublic.from_row(job)


@router.get("")
def list_jobs(
    session: SessionDep,
    owner: CurrentOwner,
    status: JobStatusName | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> JobsPublic:
    """Jobs, newest first. Pass the answer's `next` as `cursor` for the following page."""
    jobs, next_cursor = service.list_jobs(
        session, owner=owner, status=status, limit=limit, cursor=cursor
    )
    return JobsPublic(items=[JobPublic.from_row(job) for job in jobs], next=next_cursor)


@router.get("/{job_id}", responses=NOT_FOUND)
def get_job(job_id: str, session: SessionDep, owner: CurrentOwner) -> JobPublic:
    return JobPublic.from_row(service.get_job(session, job_id, owner=owner))


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    responses={**NOT_FOUND, 409: {"description": "The job has already finished"}},
)
def cancel_job(job_id: str, session: SessionDep, owner: CurrentOwner) -> JobPublic:
    """Cancel a job: a queued job at once; a running job stops within a training step
    (`cancel_requested` is true until its worker writes the final state)."""
    return JobPublic.from_row(service.cancel_job(session, job_id, owner=owner))

"""Study routes: parse, call one service function, shape the answer."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from api.deps import CurrentOwner, SessionDep, SettingsDep, TaskQueueDep
from api.studies import service
from api.studies.schemas import (
    ImportancePublic,
    StudiesPublic,
    StudyPublic,
    StudySpec,
    TrialsPublic,
    TrialStatusName,
)

router = APIRouter(prefix="/v1/studies", tags=["studies"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such study"}}


@router.post(
    "",
    status_code=201,
    responses={
        429: {"description": "This account's compute budget is used up"},
        503: {"description": "The study could not be queued"},
    },
)
def create_study(
    body: StudySpec,
    session: SessionDep,
    owner: CurrentOwner,
    settings: SettingsDep,
    tasks: TaskQueueDep,
) -> StudyPublic:
    """Start a hyperparameter search: trials (ordinary jobs with a `study_id` and `params`)
    are made from `base` with a point of `space`, up to `parallelism` at once.

    Refused with 422 naming the path: a space path that is not a job-spec field, a grid
    larger than `max_trials`, and any trial spec that `POST /v1/jobs` would refuse (every
    grid point; for random and TPE, every choice option and both ends of every range).
    """
    study = service.create_study(session, body, owner=owner, settings=settings, tasks=tasks)
    return service.study_public(session, study)


@router.get("")
def list_studies(
    session: SessionDep,
    owner: CurrentOwner,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> StudiesPublic:
    """Studies, newest first. Pass the answer's `next` as `cursor` for the following page."""
    studies, next_cursor = service.list_studies(session, owner=owner, limit=limit, cursor=cursor)
    return StudiesPublic(
        items=[service.study_public(session, study) for study in studies], next=next_cursor
    )


@router.get("/{study_id}", responses=NOT_FOUND)
def get_study(study_id: str, session: SessionDep, owner: CurrentOwner) -> StudyPublic:
    """The study: its status, trials by status, the best trial (its params, objective value
    and epoch, its best checkpoint), and the epochs pruning saved."""
    return service.study_public(session, service.get_study(session, study_id, owner=owner))


@router.get("/{study_id}/trials", responses=NOT_FOUND)
def list_trials(
    study_id: str,
    session: SessionDep,
    owner: CurrentOwner,
    sort: Literal["number", "-number", "objective", "-objective"] = "number",
    status: TrialStatusName | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> TrialsPublic:
    """The trials with their params, objective and status. `sort=objective`: best first."""
    study = service.get_study(session, study_id, owner=owner)
    items, next_cursor = service.list_trials(
        session, study, sort=sort, status=status, limit=limit, cursor=cursor
    )
    return TrialsPublic(items=items, next=next_cursor)


@router.get(
    "/{study_id}/importance",
    responses={**NOT_FOUND, 409: {"description": "Too few trials have ended with a value"}},
)
def get_importance(study_id: str, session: SessionDep, owner: CurrentOwner) -> ImportancePublic:
    """How much each parameter matters to the objective (Optuna's fANOVA evaluator;
    the values sum to 1, most important first), from the trials that ended with a value:
    succeeded ones, and pruned ones at their best value before they stopped. A parameter
    only some trials have (inside a conditional choice) is left out. 409 until at least 8
    trials have ended."""
    study = service.get_study(session, study_id, owner=owner)
    return service.importance(session, study)


@router.post(
    "/{study_id}/cancel",
    status_code=202,
    responses={**NOT_FOUND, 409: {"description": "The study has already completed"}},
)
def cancel_study(study_id: str, session: SessionDep, owner: CurrentOwner) -> StudyPublic:
    """Make no more trials; cancel the queued ones and stop the running ones."""
    study = service.cancel_study(session, study_id, owner=owner)
    return service.study_public(session, study)

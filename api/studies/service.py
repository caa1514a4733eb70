"""Studies: validation at submit, the study's record, its trials, cancelling.

Proposing trials and pruning them happen in the worker (worker/studies.py, with Optuna):
the API stores the study and sends one task that makes its first trials; each trial's end
makes the next ones.
"""

import json
import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, tuple_, update
from sqlalchemy.orm import Session

from api.db import on_commit
from api.encoding import as_utc, finite, json_safe
from api.errors import Conflict, InvalidParameter, NotFound, TooManyRequests, Unavailable
from api.jobs import service as jobs
from api.queue import PUBLISH_RETRY_POLICY, TaskQueue
from api.studies import importance as evaluate
from api.studies.schemas import (
    EpochsPublic,
    ImportancePublic,
    StudyPublic,
    StudySpec,
    TrialCounts,
    TrialPublic,
)
from api.webhooks.service import with_default_notify
from core import space as search
from core.spec import JobSpec
from descent.queue import STUDY_TASK, training_queue
from descent.settings import Settings
from store.db import session_scope
from store.models import Checkpoint, Job, JobStatus, Metric, Study, StudyStatus, StudyTrial, utcnow
from store.users import limits_for, used_device_hours

logger = logging.getLogger("api.studies")


# ---------------------------------------------------------------------------- submit


def create_study(
    session: Session, body: StudySpec, *, owner: str, settings: Settings, tasks: TaskQueue
) -> Study:
    """Validate the study whole (every trial it may make must be a valid job spec for this
    owner), store it, and send the task that makes its first trials once committed."""
    base = body.base
    checked = _check_spec(session, base, owner=owner, settings=settings)
    if checked is not None:
        raise InvalidParameter([(("body", "base", *loc), msg, val) for loc, msg, val in checked])
    try:
        params = search.parse(body.space)
        grid_size = search.grid_size(params) if body.algorithm == "grid" else None
    except search.SpaceError as exc:
        raise InvalidParameter.one(("body", "space", *exc.loc), exc.message) from None
    if grid_size is not None and grid_size > body.max_trials:
        raise InvalidParameter.one(
            ("body", "max_trials"),
            f"the grid has {grid_size:,} points, more than max_trials ({body.max_trials}): "
            f"raise max_trials to {grid_size:,} or make the grid smaller",
            body.max_trials,
        )
    _check_points(session, base, params, grid=grid_size is not None, owner=owner, settings=settings)
    limits = limits_for(session, owner, settings, lock=True)
    if limits.device_hours is not None:
        used = used_device_hours(session, owner)
        if used >= limits.device_hours:
            raise TooManyRequests(
                f"this account's compute budget of {limits.device_hours:g} device-hours "
                f"is used up ({used:.2f} used)"
            )
    stopping = JobSpec.model_validate(base).early_stopping
    objective = body.objective
    metric = objective.metric if objective else (stopping.monitor if stopping else "val_loss")
    mode = (objective.mode if objective else (stopping.mode if stopping else None)) or (
        "max" if metric.endswith("accuracy") else "min"
    )
    device = JobSpec.model_validate(base).training.device
    base = with_default_notify(session, base, owner=owner)  # its trials' events go there
    study = Study(
        owner=owner,
        name=body.name,
        status=StudyStatus.RUNNING,
        spec={
            "base": base,
            "space": body.space,
            "objective": {"metric": metric, "mode": mode},
            "algorithm": body.algorithm,
            "max_trials": body.max_trials,
            "parallelism": body.parallelism,
            "seed": body.seed,
            "pruner": body.pruner.model_dump(),
        },
        queue=training_queue(device, settings),
        grid_size=grid_size,
    )
    session.add(study)
    session.flush()
    on_commit(session, lambda: _send_top_up(study.id, study.queue, tasks))
    return study


def _check_spec(
    session: Session, body: dict[str, Any], *, owner: str, settings: Settings
) -> list[tuple[tuple[Any, ...], str, Any]] | None:
    """The errors of a job spec as POST /v1/jobs would find them (locations inside the
    spec), or None when it is valid for this owner. The owner's jobs at once and compute
    budget are not checked here: a study's trials wait for room."""
    try:
        spec = JobSpec.model_validate(body)
        spec = jobs.with_context(session, spec, owner=owner)
        jobs.check_limits(session, spec, owner=owner, settings=settings)
    except ValidationError as exc:
        return [(tuple(e["loc"]), e["msg"], e.get("input")) for e in exc.errors()]
    except InvalidParameter as exc:
        return [(tuple(e["loc"])[1:], e["msg"], e["input"]) for e in exc.errors]
    except TooManyRequests:
        return None
    return None


def _check_points(
    session: Session,
    base: dict[str, Any],
    params: list[search.Param],
    *,
    grid: bool,
    owner: str,
    settings: Settings,
) -> None:
    """Every grid point, or (other algorithms) points that take every choice option and
    both ends of every range, must be valid job specs: else 422 at the space's path."""
    candidates: list[tuple[str | None, dict[str, Any]]]
    if grid:
        candidates = [(None, point) for point in search.grid(params)]
    else:
        candidates = [(name, point) for name, _, point in search.ends(params)]
    seen: set[str] = set()
    names = [p.name for p in _all(params)]
    for varied, point in candidates:
        body = search.apply(base, params, point)
        key = json.dumps(body, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        errors = _check_spec(session, body, owner=owner, settings=settings)
        if not errors:
            continue
        shown = search.describe(params, point)
        loc, msg, _ = errors[0]
        field = ".".join(str(part) for part in loc)
        path = varied or _owning_param(names, loc) or (next(iter(shown)) if shown else "")
        where = ", ".join(f"{name} = {json.dumps(value)}" for name, value in shown.items())
        raise InvalidParameter.one(
            ("body", "space", path),
            f"with {where}: the trial's spec is invalid at {field}: {msg}",
            shown.get(path),
        )


def _all(params: list[search.Param]) -> list[search.Param]:
    found = []
    for p in params:
        found.append(p)
        for children in p.children.values():
            found.extend(_all(children))
    return found


def _owning_param(names: list[str], loc: tuple[Any, ...]) -> str | None:
    """The parameter whose path holds (or is inside) the failing field."""
    field = [str(part) for part in loc]
    best = None
    for name in names:
        path = name.split(".")
        n = min(len(path), len(field))
        if path[:n] == field[:n] and (best is None or len(path) > len(best.split("."))):
            best = name
    return best


def _send_top_up(study_id: str, queue: str, tasks: TaskQueue) -> None:
    try:
        tasks.celery.send_task(
            STUDY_TASK,
            args=[study_id],
            queue=queue,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )
    except Exception as exc:  # noqa: BLE001 - any broker failure: the study cannot start
        message = f"could not queue the study: {str(exc) or exc.__class__.__name__}"
        logger.warning("study %s: %s", study_id, message)
        with session_scope() as session:
            session.execute(
                update(Study)
                .where(Study.id == study_id, Study.status == StudyStatus.RUNNING)
                .values(status=StudyStatus.CANCELLED, finished_at=utcnow())
            )
        raise Unavailable(message) from exc


# ---------------------------------------------------------------------------- reading


@dataclass
class TrialView:
    trial: StudyTrial
    job: Job
    value: float | None
    epoch: int | None

    @property
    def status(self) -> str:
        if self.job.status == JobStatus.SUCCEEDED and (self.job.stop or {}).get("reason") == (
            "pruned"
        ):
            return "pruned"
        return self.job.status


def get_study(session: Session, study_id: str, *, owner: str) -> Study:
    study = session.scalars(
        select(Study).where(Study.id == study_id, Study.owner == owner)
    ).one_or_none()
    if study is None:
        raise NotFound(f"study {study_id} not found")
    return study


def list_studies(
    session: Session, *, owner: str, limit: int, cursor: str | None
) -> tuple[list[Study], str | None]:
    """Newest first, by (created_at, id), like jobs."""
    query = select(Study).where(Study.owner == owner)
    if cursor is not None:
        created_at, last_id = jobs.decode_cursor(cursor)
        query = query.where(tuple_(Study.created_at, Study.id) < tuple_(created_at, last_id))
    query = query.order_by(Study.created_at.desc(), Study.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    next_cursor = jobs.encode_cursor(rows[limit - 1]) if len(rows) > limit else None  # type: ignore[arg-type]
    return rows[:limit], next_cursor


def trials_of(session: Session, study: Study) -> list[TrialView]:
    """The study's trials in order, each with the best value of the objective and its epoch."""
    rows = session.execute(
        select(StudyTrial, Job)
        .join(Job, Job.id == StudyTrial.job_id)
        .where(StudyTrial.study_id == study.id)
        .order_by(StudyTrial.number)
    ).all()
    metric, mode = study.spec["objective"]["metric"], study.spec["objective"]["mode"]
    values: dict[str, list[tuple[int, float]]] = {}
    if rows:
        found = session.execute(
            select(Metric.job_id, Metric.epoch, Metric.value).where(
                Metric.job_id.in_([job.id for _, job in rows]),
                Metric.name == metric,
                Metric.step == 0,
                Metric.value.is_not(None),
            )
        )
        for job_id, epoch, value in found:
            if value is not None:  # as selected: a type checker does not know
                values.setdefault(job_id, []).append((epoch, value))
    views = []
    for trial, job in rows:
        points = [(e, v) for e, v in values.get(job.id, []) if finite(v) is not None]
        best = None
        if points:
            pick = min if mode == "min" else max
            best = pick(sorted(points), key=lambda item: item[1])
        views.append(TrialView(trial, job, best[1] if best else None, best[0] if best else None))
    return views


def checkpoint_of(session: Session, view: TrialView, metric: str) -> str | None:
    """The trial's best checkpoint by the objective (its job's best, when the job monitors
    the objective's metric; else the kept checkpoint of the objective's best epoch)."""
    if view.job.monitor == metric or view.epoch is None:
        return view.job.best_checkpoint_id
    return session.scalar(
        select(Checkpoint.id).where(
            Checkpoint.job_id == view.job.id, Checkpoint.epoch == view.epoch
        )
    )


def trial_public(session: Session, view: TrialView, metric: str) -> TrialPublic:
    created_at = as_utc(view.trial.created_at)
    assert created_at is not None
    return TrialPublic(
        number=view.trial.number,
        job_id=view.job.id,
        status=view.status,
        params=json_safe(view.trial.params),
        value=finite(view.value),
        epoch=view.epoch,
        epochs=view.job.epoch,
        checkpoint_id=checkpoint_of(session, view, metric),
        stop=json_safe(view.job.stop),
        created_at=created_at,
    )


def best_of(views: list[TrialView], mode: str) -> TrialView | None:
    scored = [v for v in views if v.value is not None and v.status in ("succeeded", "pruned")]
    if not scored:
        return None
    sign = 1.0 if mode == "min" else -1.0
    return min(scored, key=lambda v: (sign * (v.value or 0.0), v.trial.number))


def study_public(session: Session, study: Study) -> StudyPublic:
    views = trials_of(session, study)
    metric, mode = study.spec["objective"]["metric"], study.spec["objective"]["mode"]
    counts = TrialCounts(total=len(views))
    for view in views:
        setattr(counts, view.status, getattr(counts, view.status) + 1)
    trained = sum(v.job.epoch for v in views)
    full = sum(
        (v.job.spec.get("training") or {}).get("epochs", v.job.epoch)
        if v.status == "pruned"
        else v.job.epoch
        for v in views
    )
    best = best_of(views, mode)
    created_at = as_utc(study.created_at)
    assert created_at is not None
    spec = study.spec
    return StudyPublic(
        id=study.id,
        name=study.name,
        status=study.status,
        created_at=created_at,
        finished_at=as_utc(study.finished_at),
        algorithm=spec["algorithm"],
        objective=spec["objective"],
        max_trials=spec["max_trials"],
        parallelism=spec["parallelism"],
        seed=spec["seed"],
        pruner=spec["pruner"],
        grid_size=study.grid_size,
        trials=counts,
        best=trial_public(session, best, metric) if best else None,
        epochs=EpochsPublic(trained=trained, without_pruning=full, saved=full - trained),
        space=json_safe(spec["space"]),
        base=json_safe(spec["base"]),
    )


SORTS = ("number", "-number", "objective", "-objective")


def list_trials(
    session: Session,
    study: Study,
    *,
    sort: str,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[TrialPublic], str | None]:
    """The trials, sorted (``objective``: best first, trials without a value last;
    ``-objective``: worst first); the cursor is the offset of the next page."""
    views = trials_of(session, study)
    if status is not None:
        views = [v for v in views if v.status == status]
    metric, mode = study.spec["objective"]["metric"], study.spec["objective"]["mode"]
    sign = 1.0 if mode == "min" else -1.0
    if sort.endswith("objective"):
        scored = sorted(
            (v for v in views if v.value is not None),
            key=lambda v: (sign * (v.value or 0.0), v.trial.number),
            reverse=sort.startswith("-"),
        )
        views = scored + [v for v in views if v.value is None]
    elif sort == "-number":
        views = views[::-1]
    try:
        start = int(cursor) if cursor is not None else 0
        if start < 0:
            raise ValueError(cursor)
    except ValueError:
        raise InvalidParameter.one(("query", "cursor"), "invalid cursor", cursor) from None
    page = views[start : start + limit]
    next_cursor = str(start + limit) if start + limit < len(views) else None
    return [trial_public(session, v, metric) for v in page], next_cursor


def importance(session: Session, study: Study) -> ImportancePublic:
    """Parameter importance from the trials that ended with a value (409 while fewer than
    ``MIN_TRIALS`` have, or while they all share one value)."""
    mode = study.spec["objective"]["mode"]
    ended = [
        (v.trial.raw, float(v.value))
        for v in trials_of(session, study)
        if v.value is not None and v.status in ("succeeded", "pruned")
    ]
    if len(ended) < evaluate.MIN_TRIALS:
        raise Conflict(
            f"parameter importance needs at least {evaluate.MIN_TRIALS} trials that ended "
            f"with a value of the objective; {len(ended)} have so far"
        )
    if len({value for _, value in ended}) == 1:
        raise Conflict(f"the {len(ended)} ended trials all have the same objective value")
    found = evaluate.importances(study.spec["space"], ended, mode)
    return ImportancePublic(params=found, trials=len(ended), evaluator=evaluate.EVALUATOR)


# ---------------------------------------------------------------------------- cancel


def cancel_study(session: Session, study_id: str, *, owner: str) -> Study:
    """Stop making trials and cancel the queued and running ones."""
    study = get_study(session, study_id, owner=owner)
    if study.status == StudyStatus.COMPLETED:
        raise Conflict(f"study {study_id} has already completed")
    if study.status == StudyStatus.RUNNING:
        session.execute(
            update(Study)
            .where(Study.id == study_id, Study.status == StudyStatus.RUNNING)
            .values(status=StudyStatus.CANCELLED, finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        session.refresh(study)
    active = session.scalars(
        select(Job.id)
        .join(StudyTrial, StudyTrial.job_id == Job.id)
        .where(
            StudyTrial.study_id == study_id,
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
        )
    ).all()
    for job_id in active:
        try:
            jobs.cancel_job(session, job_id, owner=owner)
        except Conflict:
            pass  # it ended meanwhile
    return study

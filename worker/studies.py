"""Studies in the worker: proposing trials and pruning them, with Optuna, from the database.

The database is the source of truth. Each time a trial is proposed, or an epoch of a trial
is committed, an in-memory Optuna study is rebuilt from the study's recorded trials (their
points, objective values per epoch, and the pruner's bookkeeping), and asked once
(ask-and-tell). Nothing of the search lives only in a process, so a restart of the API or of
any worker loses nothing.

- Proposing (``top_up``): a trial's number is unique in its study, so two top-ups racing,
  or one retried after a crash, never make a trial twice. A trial is made only while the
  study has fewer than ``parallelism`` trials queued or running, fewer than ``max_trials``
  in all, and its owner is under their limit of jobs at once and their compute budget.
  The sampler of trial n is seeded from (study seed, n): the same study run again proposes
  the same points (random search always; TPE as long as the trials' results repeat). A grid
  is walked in a fixed order, its n-th point for trial n.
- A trial's job is sent to its queue once committed, and recorded as sent (store/outbox.py):
  one left unsent by a process killed in between is sent by the sweeper after a grace, so
  it never holds one of the study's ``parallelism`` places forever.
- The sweeper (``sweep``, worker/sweeper.py) tops up, every pass, each running study with
  room for a trial, and completes those whose trials have all ended: a study whose process
  died between one trial's end and the next one's making goes on.
- Pruning (``prune``): decided in the same transaction that commits the epoch's metrics.
  A pruned trial ends after that epoch as a job that *succeeded*, with the stop reason
  ``pruned``; its checkpoints (the best among them) are kept.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import optuna
from celery import shared_task
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState, create_trial
from pydantic import ValidationError
from sqlalchemy import case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from core import space as search
from core.spec import JobSpec, warnings
from descent.queue import STUDY_TASK, TRAIN_TASK
from descent.settings import Settings, get_settings
from store import outbox, webhooks
from store.db import session_scope
from store.models import Job, JobStatus, Metric, Study, StudyStatus, StudyTrial, utcnow
from store.users import active_jobs, limits_for, used_device_hours

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

Send = Callable[[str, str], None]  # (job id, queue)
SCALARS = (str, int, float, bool, type(None))
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


# ---------------------------------------------------------------------------- records


@dataclass
class TrialRecord:
    number: int
    job_id: str
    status: str  # the job's
    raw: dict[str, Any]
    system_attrs: dict[str, Any]
    pruned: dict[str, Any] | None
    values: dict[int, float] = field(default_factory=dict)  # objective per epoch

    @property
    def state(self) -> TrialState:
        if self.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            return TrialState.RUNNING
        if self.status == JobStatus.SUCCEEDED:
            if self.pruned is not None:
                return TrialState.PRUNED
            return TrialState.COMPLETE if self.objective() is not None else TrialState.FAIL
        return TrialState.FAIL

    def objective(self, mode: str = "min") -> float | None:
        """The best value of the objective over the trial's epochs."""
        finite = [v for v in self.values.values() if math.isfinite(v)]
        if not finite:
            return None
        return min(finite) if mode == "min" else max(finite)


def objective_of(study: Study) -> tuple[str, str]:
    objective = study.spec["objective"]
    return objective["metric"], objective["mode"]


def load(session: Session, study: Study, *, values: bool = True) -> list[TrialRecord]:
    """The study's trials in order of number, each with its objective per epoch (none when
    ``values`` is false: what only counts the trials need not read every epoch's metric)."""
    rows = session.execute(
        select(StudyTrial, Job.status)
        .join(Job, Job.id == StudyTrial.job_id)
        .where(StudyTrial.study_id == study.id)
        .order_by(StudyTrial.number)
    ).all()
    records = [
        TrialRecord(t.number, t.job_id, status, t.raw, dict(t.system_attrs or {}), t.pruned)
        for t, status in rows
    ]
    by_job = {r.job_id: r for r in records}
    if by_job and values:
        metric, _ = objective_of(study)
        found = session.execute(
            select(Metric.job_id, Metric.epoch, Metric.value).where(
                Metric.job_id.in_(list(by_job)), Metric.name == metric, Metric.step == 0
            )
        )
        for job_id, epoch, value in found:
            by_job[job_id].values[epoch] = math.nan if value is None else float(value)
    return records


# ---------------------------------------------------------------------------- Optuna


def _scalar_choices(p: search.Param) -> bool:
    return all(isinstance(o, SCALARS) for o in p.options) and len(
        {(type(o), o) for o in p.options}
    ) == len(p.options)


def distribution(p: search.Param) -> BaseDistribution:
    if p.kind == "choice":
        choices = p.options if _scalar_choices(p) else list(range(len(p.options)))
        return CategoricalDistribution(choices)
    if p.kind == "int":
        return IntDistribution(int(p.low), int(p.high), step=p.step, log=p.log)
    return FloatDistribution(p.low, p.high, log=p.log)


def _to_optuna(p: search.Param, value: Any) -> Any:
    return p.options[value] if p.kind == "choice" and _scalar_choices(p) else value


def frozen(params: list[search.Param], record: TrialRecord, mode: str) -> FrozenTrial:
    active = list(search.active(params, record.raw))
    state = record.state
    return create_trial(
        state=state,
        value=record.objective(mode) if state == TrialState.COMPLETE else None,
        params={p.name: _to_optuna(p, record.raw[p.name]) for p in active},
        distributions={p.name: distribution(p) for p in active},
        intermediate_values=dict(record.values),
        system_attrs=dict(record.system_attrs),
    )


def rebuild(
    study: Study,
    records: list[TrialRecord],
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """An in-memory Optuna study holding the recorded trials (numbers 0, 1, … in order)."""
    _, mode = objective_of(study)
    params = search.parse(study.spec["space"])
    rebuilt = optuna.create_study(
        study_name=study.id,
        direction="minimize" if mode == "min" else "maximize",
        sampler=sampler or optuna.samplers.RandomSampler(seed=0),
        pruner=pruner or optuna.pruners.NopPruner(),
    )
    for record in records:
        rebuilt.add_trial(frozen(params, record, mode))
    return rebuilt


def trial_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def propose(study: Study, records: list[TrialRecord], number: int) -> dict[str, Any] | None:
    """Trial ``number``'s point ({name: value, a choice's option index}); None once a grid
    has no point left."""
    spec = study.spec
    params = search.parse(spec["space"])
    if spec["algorithm"] == "grid":
        for index, grid_point in enumerate(search.grid(params)):
            if index == number:
                return grid_point
        return None
    seed = trial_seed(spec["seed"], number)
    sampler: optuna.samplers.BaseSampler
    if spec["algorithm"] == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    else:
        # Seeded per trial, a random sampler draws the same point whatever the trials
        # before: they are not rebuilt (that grew with every trial the study made).
        sampler, records = optuna.samplers.RandomSampler(seed=seed), []
    trial = rebuild(study, records, sampler=sampler).ask()
    point: dict[str, Any] = {}

    def suggest(group: list[search.Param]) -> None:
        for p in group:
            if p.kind == "choice":
                dist = distribution(p)
                assert isinstance(dist, CategoricalDistribution)
                chosen = trial.suggest_categorical(p.name, dist.choices)
                index = dist.choices.index(chosen)
                point[p.name] = index
                suggest(p.children.get(index, []))
            elif p.kind == "int":
                point[p.name] = trial.suggest_int(
                    p.name, int(p.low), int(p.high), step=p.step, log=p.log
                )
            else:
                point[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)

    suggest(params)
    return point


# ---------------------------------------------------------------------------- top-up


@contextmanager
def _transaction(sessions: sessionmaker[Session] | None) -> Iterator[Session]:
    """One transaction, in the given sessions' database (the sweeper's engine of its own), or
    in the process's (``session_scope``)."""
    if sessions is None:
        with session_scope() as session:
            yield session
    else:
        with sessions.begin() as session:
            yield session


def _cap(study: Study) -> int:
    """How many trials the study makes in all."""
    cap: int = study.spec["max_trials"]
    return cap if study.grid_size is None else min(cap, study.grid_size)


def top_up(
    study_id: str,
    send: Send,
    settings: Settings | None = None,
    sessions: sessionmaker[Session] | None = None,
) -> list[str]:
    """Make the trials the study has room for now; returns their job ids (sent to their
    queue once committed). Ends the study once its last trial has ended."""
    settings = settings or get_settings()
    sent: list[tuple[str, str, datetime | None]] = []  # the trials made, to send
    try:
        with _transaction(sessions) as session:
            owner = session.scalar(
                select(Study.owner).where(Study.id == study_id, Study.status == StudyStatus.RUNNING)
            )
            if owner is None:
                return []
            # The owner's write lock: top-ups of one owner (and their submits) take turns.
            limits = limits_for(session, owner, settings, lock=True)
            study = session.get(Study, study_id)  # read under the lock
            if study is None or study.status != StudyStatus.RUNNING:
                return []
            # TPE's proposals read every trial; random and grid ones only the trial's number
            # (the trials are counted, not read: that grew with every trial made).
            tpe = study.spec["algorithm"] == "tpe"
            records = load(session, study) if tpe else []
            if tpe:
                made, running = len(records), sum(r.status in ACTIVE for r in records)
            else:
                made, running = _counts(session, study.id)
            cap = _cap(study)
            if made >= cap:
                if running == 0:
                    study.status, study.finished_at = StudyStatus.COMPLETED, utcnow()
                return []
            room = min(
                study.spec["parallelism"] - running,
                cap - made,
                limits.active_jobs - active_jobs(session, study.owner),
            )
            if limits.device_hours is not None:
                if used_device_hours(session, study.owner) >= limits.device_hours:
                    room = 0
            for number in range(made, made + max(room, 0)):
                point = propose(study, records, number)
                if point is None:
                    break
                job = _make_trial(session, study, number, point)
                sent.append((job.id, job.queue, job.unsent_since))
                if tpe:
                    records.append(TrialRecord(number, job.id, job.status, point, {}, None))
    except IntegrityError:
        # Another top-up made these trial numbers first: nothing to do.
        log.info("study %s: a concurrent top-up made the trials", study_id)
        return []
    for job_id, queue, unsent_since in sent:
        try:
            send(job_id, queue)
        except Exception as exc:  # noqa: BLE001 - any broker failure: the trial fails
            message = f"could not queue the job: {str(exc) or exc.__class__.__name__}"
            log.warning("study %s: trial job %s: %s", study_id, job_id, message)
            with _transaction(sessions) as session:
                job = session.get_one(Job, job_id)
                if job.status == JobStatus.QUEUED:
                    job.status, job.error, job.finished_at = JobStatus.FAILED, message, utcnow()
        else:
            outbox.mark_sent(lambda: _transaction(sessions), job_id, unsent_since)
    return [job_id for job_id, _, _ in sent]


def _counts(session: Session, study_id: str) -> tuple[int, int]:
    """(trials made, trials queued or running) of the study."""
    active = func.coalesce(func.sum(case((Job.status.in_(ACTIVE), 1), else_=0)), 0)
    made, running = session.execute(
        select(func.count(), active)
        .select_from(StudyTrial)
        .join(Job, Job.id == StudyTrial.job_id)
        .where(StudyTrial.study_id == study_id)
    ).one()
    return int(made), int(running)


def _make_trial(session: Session, study: Study, number: int, point: dict[str, Any]) -> Job:
    params = search.parse(study.spec["space"])
    body = search.apply(study.spec["base"], params, point)
    body["name"] = f"{study.name or 'study'} #{number}"
    error = None
    try:
        spec = JobSpec.model_validate(body)
        spec_json = spec.model_dump(mode="json")
        stopping = spec.early_stopping
        monitor = stopping.monitor if stopping else "val_loss"
        mode = (stopping.mode if stopping else None) or "min"
        job = Job(
            owner=study.owner,
            name=spec.name,
            status=JobStatus.QUEUED,
            spec=spec_json,
            spec_hash=spec.spec_hash(),
            queue=study.queue,
            monitor=monitor,
            mode=mode,
            warnings=warnings(spec),
            parameters=spec.parameter_counts(),
        )
    except (ValidationError, ValueError) as exc:
        # Every point's parts were validated at submit; should a combination still not be
        # a valid spec, the trial fails saying why, and the study goes on.
        error = f"the trial's spec is invalid: {exc}"
        job = Job(
            owner=study.owner,
            name=body["name"],
            status=JobStatus.FAILED,
            spec=body,
            spec_hash="",
            queue=study.queue,
            monitor="val_loss",
            mode="min",
            error=error,
            finished_at=utcnow(),
        )
    session.add(job)
    session.flush()
    if error is not None:
        webhooks.record(session, job)  # made failed: its status event
    session.add(
        StudyTrial(
            study_id=study.id,
            number=number,
            job_id=job.id,
            params=search.describe(params, point),
            raw=point,
            system_attrs={},
        )
    )
    session.flush()
    return job


def after_job(job_id: str, send: Send, settings: Settings | None = None) -> None:
    """A job ended: top up its owner's running studies (a trial's study gets its next
    trial; another job's end may free room under the owner's limit of jobs at once)."""
    with session_scope() as session:
        studies = list(
            session.scalars(
                select(Study.id)
                .join(Job, Job.owner == Study.owner)
                .where(Job.id == job_id, Study.status == StudyStatus.RUNNING)
                .order_by(Study.created_at)
            )
        )
    for study_id in studies:
        top_up(study_id, send, settings)


def sweep(sessions: sessionmaker[Session], send: Send, settings: Settings) -> list[str]:
    """The sweeper's pass over the studies: top up each running study that has room for a
    trial (fewer trials queued or running than its parallelism, fewer made than it makes in
    all) or whose trials have all ended (it completes). Returns the job ids of the trials
    made. ``top_up`` takes the owner's lock and numbers trials uniquely, so a pass racing
    another worker's, or a trial's end, makes no trial twice."""
    with sessions() as session:
        active = func.coalesce(func.sum(case((Job.status.in_(ACTIVE), 1), else_=0)), 0)
        counts = {
            study_id: (total, busy)
            for study_id, total, busy in session.execute(
                select(StudyTrial.study_id, func.count(), active)
                .join(Job, Job.id == StudyTrial.job_id)
                .join(Study, Study.id == StudyTrial.study_id)
                .where(Study.status == StudyStatus.RUNNING)
                .group_by(StudyTrial.study_id)
            )
        }
        running = list(
            session.scalars(
                select(Study).where(Study.status == StudyStatus.RUNNING).order_by(Study.created_at)
            )
        )
    due = []
    for study in running:
        total, busy = counts.get(study.id, (0, 0))
        room = total < _cap(study) and busy < study.spec["parallelism"]
        if room or (total >= _cap(study) and busy == 0):
            due.append(study.id)
    made = []
    for study_id in due:
        try:
            made += top_up(study_id, send, settings, sessions)
        except Exception as exc:  # noqa: BLE001 - one study's failure never holds the others
            log.warning("study %s: the sweeper's top-up failed: %s", study_id, exc)
    return made


@shared_task(name=STUDY_TASK, bind=True)
def top_up_task(self, study_id: str) -> int:
    """Sent by the API when a study is made: its first trials."""

    def send(job_id: str, queue: str) -> None:
        self.app.send_task(TRAIN_TASK, args=[job_id], queue=queue)

    return len(top_up(study_id, send))


# ---------------------------------------------------------------------------- pruning


def make_pruner(config: dict[str, Any], epochs: int) -> optuna.pruners.BasePruner | None:
    name = config.get("name", "none")
    min_epochs = int(config.get("min_epochs", 1))
    factor = int(config.get("reduction_factor", 3))
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(config.get("min_trials", 5)), n_warmup_steps=min_epochs - 1
        )
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=min_epochs, reduction_factor=factor
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=min_epochs, max_resource=max(epochs, min_epochs), reduction_factor=factor
        )
    return None


def recorded_prune(job_id: str) -> tuple[bool, dict[str, Any] | None]:
    """Whether the job is a trial of a study that prunes, and the pruning decision already
    taken for it (a trial resumed after a restart stops at once)."""
    with session_scope() as session:
        row = session.execute(
            # The pruner's name only, not the whole study (its base spec and its space).
            select(StudyTrial.pruned, Study.spec["pruner"]["name"].as_string().label("pruner"))
            .join(Study, Study.id == StudyTrial.study_id)
            .where(StudyTrial.job_id == job_id)
        ).one_or_none()
    if row is None:
        return False, None
    prunes = (row.pruner or "none") != "none"
    return prunes or row.pruned is not None, row.pruned


def prune(session: Session, job_id: str, epoch: int, last_epoch: int) -> dict[str, Any] | None:
    """Whether the trial of this job stops after ``epoch``, whose metrics the session has
    just written (same transaction). Returns the job's ``stop`` when it does."""
    trial = session.scalars(select(StudyTrial).where(StudyTrial.job_id == job_id)).one_or_none()
    if trial is None:
        return None
    if trial.pruned is not None:
        return trial.pruned
    study = session.get_one(Study, trial.study_id)
    config = study.spec["pruner"]
    pruner = make_pruner(config, last_epoch)
    if pruner is None or epoch >= last_epoch:
        return None
    records = load(session, study)
    rebuilt = rebuild(study, records, pruner=pruner)
    index = next(i for i, r in enumerate(records) if r.job_id == job_id)
    me = rebuilt.get_trials(deepcopy=False)[index]
    if epoch not in me.intermediate_values:
        return None
    decision = pruner.prune(rebuilt, me)
    attrs = rebuilt.get_trials(deepcopy=True)[index].system_attrs
    trial.system_attrs = dict(attrs)
    if not decision:
        return None
    metric, mode = objective_of(study)
    detail = explain(config, metric, mode, records, index, epoch, attrs)
    stop = {"reason": "pruned", "rule": config["name"], "epoch": epoch, **detail}
    trial.pruned = stop
    return stop


def explain(
    config: dict[str, Any],
    metric: str,
    mode: str,
    records: list[TrialRecord],
    index: int,
    epoch: int,
    attrs: dict[str, Any],
) -> dict[str, Any]:
    """The rule's numbers, and a sentence saying them."""
    me = records[index]
    value = me.values.get(epoch, math.nan)
    if config["name"] == "median":
        best = me.objective(mode)
        at_step = [
            r.values[epoch]
            for r in records
            if r.state == TrialState.COMPLETE and math.isfinite(r.values.get(epoch, math.nan))
        ]
        median = float(np.median(at_step)) if at_step else math.nan
        shown = f"{best:.4g}" if best is not None else "not a number"
        return {
            "value": best,
            "threshold": median,
            "trials": len(at_step),
            "detail": f"{metric} {shown} by epoch {epoch} is worse than the median "
            f"{median:.4g} of {len(at_step)} finished trials at epoch {epoch}",
        }
    factor = int(config.get("reduction_factor", 3))
    rungs = sorted(int(k.rsplit("_", 1)[1]) for k in attrs if k.startswith("completed_rung_"))
    if not rungs or not math.isfinite(value):
        return {
            "value": None if not math.isfinite(value) else value,
            "detail": f"{metric} is not a number at epoch {epoch}",
        }
    rung = rungs[-1]
    key = f"completed_rung_{rung}"
    competing = [
        r.system_attrs[key] for i, r in enumerate(records) if i != index and key in r.system_attrs
    ]
    competing.append(attrs[key])
    ranked = sorted(competing, reverse=mode == "max")
    keep = max(len(ranked) // factor, 1)
    return {
        "value": value,
        "threshold": ranked[keep - 1],
        "trials": len(ranked),
        "rung": rung,
        "detail": f"{metric} {value:.4g} at epoch {epoch} is not in the top 1/{factor} of the "
        f"{len(ranked)} trials at rung {rung} (the top {keep} reached {ranked[keep - 1]:.4g})",
    }

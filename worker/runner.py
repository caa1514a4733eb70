"""Runs one job: claim it, train it with the core, write its epochs, checkpoints and end.

Every write is a short transaction of its own, so the API (which may share a SQLite file
with the worker) reads while the worker trains. An epoch's metrics, its checkpoint row and
the job's progress commit together; a checkpoint's files are written before its row and
deleted after it, and files left without a row by a crash are swept when the job starts
and when it ends.

Exactly one execution: a job is run only by the worker that holds its lease (``jobs.worker``
with a fresh ``heartbeat_at``). Claiming is a compare-and-set on the attempt number, and
every epoch's transaction first checks that this worker still holds the lease, so a worker
presumed dead (and replaced) can never write over the job's new run.

Failures are classified (see ``classify``): those in ``settings.retried_failures`` (by
default a lost worker or a lost connection) resume from the last checkpoint on the next
attempt; the others fail the job at once with their reason. A job is started at most
``settings.max_attempts`` times.
"""

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import torch
from sqlalchemy import case, delete, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from core.distributed import RankDied
from core.errors import NonFiniteLoss, TrainingError
from core.resources import Resources
from core.results import EpochRecord, FitResult
from core.spec import JobSpec
from core.train import Trainer, TrainerHooks
from descent.settings import Settings, get_settings
from store import counters, webhooks
from store.artifacts import Artifacts, get_artifacts
from store.db import session_scope
from store.models import Checkpoint, Job, JobStatus, Metric, new_id
from store.users import limits_for, used_device_hours
from worker import studies
from worker.resources import job_resources
from worker.threads import job_threads
from worker.writer import (
    Background,
    Cadence,
    CheckpointWriter,
    Snapshot,
    StoredFiles,
    expected_write_seconds,
    remember_write,
    snapshot,
    store_files,
)

log = logging.getLogger(__name__)

CANCEL_POLL_EVERY = 0.2
# The epochs' metrics commit at most this often (those ended meanwhile go in one transaction):
# visible within this long, at a few commits a second however short the epochs.
COMMIT_EVERY = 0.2
# How often a running job checks its owner's compute budget (device_hours), at most.
BUDGET_CHECK_SECONDS = 5.0
# Set when the worker is asked to stop (SIGTERM: a redeploy, a spot or preemptible machine
# taken back; see worker/app.py): the running job stops at its next step, and the task hands
# it back to the queue to resume from its last checkpoint on another worker.
PREEMPTED = threading.Event()

# Failure classes (settings.retry_failures names the ones retried).
WORKER_LOST = "worker_lost"
CONNECTION = "connection"
OUT_OF_MEMORY = "out_of_memory"
NON_FINITE_LOSS = "non_finite_loss"
TRAINING_ERROR = "training_error"
INTERNAL = "internal"


class JobNotFound(LookupError):
    pass


class LeaseLost(Exception):
    """Another worker took the job over (this one was presumed dead): stop, write nothing."""


@dataclass
class RetryableFailure(Exception):
    """A failure of a retried class: the task retries the job from its last checkpoint."""

    failure: str
    message: str
    # When _release queued the job again (store/outbox.py), once its retry is sent.
    unsent_since: datetime | None = None

    def __str__(self) -> str:
        return f"{self.failure}: {self.message}"


def now() -> datetime:
    return datetime.now(UTC)


def finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def worker_identity(node: str) -> str:
    """``node/pid``: unique per process, so two processes of one node never share a lease."""
    return f"{node}/{os.getpid()}"


def counter_source(worker: str) -> str:
    """The counters' row of a worker: its node name without the pid, so that a restarted
    worker adds to the rows of the one before it (rows stay as many as the nodes)."""
    return worker.rpartition("/")[0] or worker


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite keeps no zone
        return value.replace(tzinfo=UTC)
    return value


def lease_timeout(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.lease_timeout_seconds)


def _holder_is_dead_here(holder: str | None, worker: str) -> bool:
    """Whether the lease's holder is a process of this same node that no longer exists
    (Celery replaced a killed pool process): its lease need not time out first."""
    if not holder or "/" not in holder or "/" not in worker:
        return False
    node, _, pid = holder.rpartition("/")
    if node != worker.rpartition("/")[0] or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def claim(job_id: str, worker: str, settings: Settings | None = None) -> Job | None:
    """Take the job's lease, or return None when there is nothing to run.

    Nothing to run: the job has ended, another live worker holds it, it was cancelled, or
    it has been started max_attempts times already (it is then failed with that reason).
    """
    settings = settings or get_settings()
    with session_scope() as session:
        # The usual case in one transaction: a queued job, not cancelled, with attempts left.
        job = _take(
            session,
            job_id,
            worker,
            Job.status == JobStatus.QUEUED,
            Job.cancel_requested.is_(False),
            Job.attempt < settings.max_attempts,
        )
        if job is not None:
            return job
    # Anything else (a lost worker's job, a cancel, a delivery of a job that ended), read
    # first, then a compare-and-set on what was read.
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"job {job_id} does not exist")
        if job.status in JobStatus.TERMINAL:
            log.info("job %s has already %s; this delivery does nothing", job_id, job.status)
            return None
        heartbeat = _aware(job.heartbeat_at)
        live = heartbeat is not None and now() - heartbeat < lease_timeout(settings)
        if (
            job.status == JobStatus.RUNNING
            and live
            and job.worker != worker
            and not _holder_is_dead_here(job.worker, worker)
        ):
            log.info("job %s is held by %s; this delivery does nothing", job_id, job.worker)
            return None
        attempt, status, holder, epoch = job.attempt, job.status, job.worker, job.epoch
        cancel = job.cancel_requested
    # Compare-and-sets on what was read: whoever changed the job meanwhile wins.
    unchanged = (Job.attempt == attempt, Job.status == status)

    def end(values: dict[str, Any]) -> None:
        """Nothing to run: the job ends (its status event recorded by the winner)."""
        with session_scope() as session:
            webhooks.end_job(session, job_id, unchanged, values)

    if cancel:
        end(_finish_values(JobStatus.CANCELLED, stop=_cancel_stop(epoch)))
        return None
    # A job still marked running whose lease this delivery may take: its worker was lost.
    lost = status == JobStatus.RUNNING and holder != worker
    if lost and WORKER_LOST not in settings.retried_failures:
        message = f"its worker ({holder}) was lost, and lost workers are not retried"
        end(_failed_values(message, WORKER_LOST, epoch))
        return None
    if attempt >= settings.max_attempts:
        message = (
            f"the job was started {attempt} times without finishing (its worker was lost or "
            f"its connection failed each time); it is not started again (max_attempts "
            f"{settings.max_attempts})"
        )
        end(_failed_values(message, WORKER_LOST if lost else CONNECTION, epoch))
        return None
    with session_scope() as session:
        job = _take(session, job_id, worker, *unchanged)
        if job is None:
            log.info("job %s changed while being claimed; this delivery does nothing", job_id)
            return None
        if lost:
            log.warning(
                "job %s: its worker %s was lost; attempt %d resumes it", job_id, holder, job.attempt
            )
        return job


def _take(session: Any, job_id: str, worker: str, *where: Any) -> Job | None:
    """The job's lease taken by a compare-and-set UPDATE on ``where``, its status event
    recorded in the same transaction; the job, or None when ``where`` no longer holds."""
    at = now()
    job: Job | None = session.scalars(
        update(Job)
        .where(Job.id == job_id, *where)
        .values(
            status=JobStatus.RUNNING,
            attempt=Job.attempt + 1,
            worker=worker,
            heartbeat_at=at,
            unsent_since=None,  # its message was delivered (store/outbox.py)
            started_at=func.coalesce(Job.started_at, at),
        )
        .returning(Job),  # the job as claimed, in the same statement
        execution_options={"synchronize_session": False, "populate_existing": True},
    ).one_or_none()
    if job is None:
        return None
    webhooks.record(session, job)  # its status event, running: with the claim
    return job


def first_run(job: Job) -> bool:
    """Whether this claim starts the job's first run: no earlier attempt trained an epoch,
    so no checkpoint, metric or file of one exists to resume from, replace or sweep (a
    lost or retried attempt counts; a preempted one is not counted, and had committed every
    epoch it trained when it handed the job back)."""
    return job.attempt == 1 and job.epoch == 0


def _cancel_stop(epoch: int) -> dict[str, Any]:
    return {"reason": "cancelled", "rule": None, "epoch": epoch, "detail": "cancelled by the user"}


def _finish_values(
    status: str, *, stop: dict[str, Any] | None = None, error: str | None = None
) -> dict[str, Any]:
    return {
        "status": status,
        "finished_at": now(),
        "stop": stop,
        "error": error,
        "worker": None,
        "heartbeat_at": None,
        "unsent_since": None,
    }


def _failed_values(message: str, failure: str, epoch: int) -> dict[str, Any]:
    stop = {"reason": "error", "rule": None, "failure": failure, "epoch": epoch, "detail": message}
    return _finish_values(JobStatus.FAILED, stop=stop, error=message)


def finish(
    session: Any,
    job: Job,
    status: str,
    *,
    stop: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    for key, value in _finish_values(status, stop=stop, error=error).items():
        setattr(job, key, value)


class Lease(threading.Thread):
    """Heartbeats the job's lease and watches its cancel flag, off the training thread,
    so that the training loop only reads an Event at each step. If the lease is found held
    by another worker, ``lost`` is set and training stops."""

    def __init__(self, job_id: str, worker: str, heartbeat_every: float) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.job_id, self.worker = job_id, worker
        self.heartbeat_every = heartbeat_every
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        last_beat = time.monotonic()
        while not self.done.wait(CANCEL_POLL_EVERY):
            try:
                with session_scope() as session:
                    if time.monotonic() - last_beat >= self.heartbeat_every:
                        last_beat = time.monotonic()
                        result = session.execute(
                            update(Job)
                            .where(Job.id == self.job_id, Job.worker == self.worker)
                            .values(heartbeat_at=now())
                        )
                        if not result.rowcount:  # type: ignore[attr-defined]
                            log.warning("job %s: lease lost to another worker", self.job_id)
                            self.lost.set()
                    flag = session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id))
                if flag:
                    self.cancelled.set()
            except Exception:  # the database may blink; training goes on
                log.exception("lease update for job %s failed", self.job_id)


@dataclass
class EpochItem:
    """An epoch handed to the recorder: its record and its time on the training thread."""

    record: EpochRecord
    seconds: float


class WorkerHooks(TrainerHooks):
    def __init__(
        self,
        job: Job,
        lease: Lease,
        artifacts: Artifacts,
        keep_top_k: int,
        settings: Settings,
    ) -> None:
        self.job_id, self.owner, self.attempt = job.id, job.owner, job.attempt
        self.mode = job.mode
        self.lease, self.artifacts, self.keep_top_k = lease, artifacts, keep_top_k
        self.settings = settings
        self.budget_used_up: str | None = None
        # training.max_runtime_seconds: the job's own limit, over all its attempts, counted
        # on the training thread (runtime: the job's training time so far).
        self.max_runtime: float | None = None
        self.runtime = 0.0
        self.runtime_used_up: str | None = None
        # A trial of a study that prunes: the pruner's decision (the job's stop) once it
        # prunes the trial.
        self.trial = False
        self.pruned: dict[str, Any] | None = None
        self.total_epochs = 0  # the spec's training.epochs, for the pruner
        self.best_events = False  # the job's webhooks want an event for each new best
        # The built model's trainable and frozen parameter counts: on the job's row with the
        # first commit (set before training starts).
        self.parameters: dict[str, int] | None = None
        self.model_parameters = 0  # their sum (0: not counted)
        # What the recorder's commits found (a used-up budget, a pruning): acted on at the
        # end of the training thread's next epoch, never in the middle of one.
        self._found_budget: str | None = None
        self._found_pruned: dict[str, Any] | None = None
        self._budget_checked = -math.inf
        self._mark = time.monotonic()
        # Checkpoints on the spec's cadence (worker/writer.py).
        self.cadence: Cadence | None = None
        self.held_best: Snapshot | None = None  # a best epoch's state, not yet due
        self.final: Snapshot | None = None  # the run's last epoch's, written by finish()
        # Set once this attempt's first commit has cleared what earlier attempts wrote past it
        # (at once on a first run: nothing to clear).
        self.first_run = first_run(job)
        self._redo_cleared = self.first_run
        # The epochs' records and the checkpoints, each on a thread of its own.
        self.recorder: Background[EpochItem] = Background(
            f"epochs-{job.id}", self._commit_epochs, batch=True, linger=COMMIT_EVERY
        )
        self.writer = CheckpointWriter(f"checkpoints-{job.id}", self._store_checkpoint)

    def limit_runtime(self, max_runtime: float | None, runtime: float, epoch: int) -> None:
        """Stop after the epoch in which the job's training time passes max_runtime
        (checked at the start too: a resumed job may have used its time already)."""
        self.max_runtime, self.runtime = max_runtime, runtime
        self._check_runtime(runtime, epoch)

    def _check_runtime(self, runtime: float, epoch: int) -> None:
        if self.max_runtime is not None and runtime >= self.max_runtime:
            self.runtime_used_up = (
                f"trained for {runtime:.1f} s, past training.max_runtime_seconds "
                f"({self.max_runtime:g}); stopped after epoch {epoch}"
            )

    def should_stop(self) -> bool:
        return (
            self.lease.cancelled.is_set()
            or self.lease.lost.is_set()
            or self.budget_used_up is not None
            or self.runtime_used_up is not None
            or self.pruned is not None
            or PREEMPTED.is_set()
        )

    def stopped_itself(self) -> bool:
        """Stopped for a reason of the job's own (a cancel, a limit, a pruner), not the worker's."""
        return (
            self.lease.cancelled.is_set()
            or self.budget_used_up is not None
            or self.runtime_used_up is not None
            or self.pruned is not None
        )

    def start_clock(self) -> None:
        self._mark = time.monotonic()

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        """Hand the epoch's record to the recorder and, when the cadence says so, a snapshot
        of the state to the writer; training goes on while they commit and store.

        A study's trial waits for its epoch's commit, where the pruner decides, so that a
        pruned trial stops after exactly that epoch. Other jobs act on what the commits
        found (a used-up budget) at their next epoch's end."""
        if self.lease.lost.is_set():
            raise LeaseLost(self.job_id)
        seconds = time.monotonic() - self._mark
        self._mark = time.monotonic()
        if self.cadence is None:  # this run's first epoch (before the recorder reads these)
            spec = trainer.spec
            self.cadence = Cadence(
                spec.checkpoints,
                spec.training.epochs,
                write_seconds=expected_write_seconds(self.model_parameters),
            )
            self.total_epochs = spec.training.epochs
            self.best_events = spec.notify is not None and "best" in spec.notify.events
        self.recorder.put(EpochItem(record, seconds), record.epoch)  # raises a failed commit
        self.runtime += seconds
        self._check_runtime(self.runtime, record.epoch)
        if self.trial and self.pruned is None and record.stop is None:
            self.recorder.wait(record.epoch)
        self._take_findings()
        # A run about to stop (a limit, a pruner, a cancel) ends with its last epoch's checkpoint.
        stopping = self.should_stop()
        if self.cadence.due(record) or stopping:
            snap = snapshot(trainer, record)
            if stopping or self.cadence.last(record):
                # The run's last epoch: its checkpoint (and a best held) is written by
                # finish(), in one transaction with the last epochs and the job's end.
                if record.is_best:
                    self.held_best = None
                self.final = snap
            else:
                if not record.is_best:
                    self._hand_over_best()
                self.held_best = None
                self.writer.put(snap, record.epoch)
            self.cadence.written()
        elif record.is_best:
            # A best between two due epochs: kept in memory (a newer best replaces it) and
            # written with the next due checkpoint, or at the run's end.
            self.held_best = snapshot(trainer, record)

    def _hand_over_best(self) -> None:
        if self.held_best is not None:
            self.writer.put(self.held_best, self.held_best.epoch)
            self.held_best = None

    def _take_findings(self) -> None:
        self.budget_used_up = self.budget_used_up or self._found_budget
        self.pruned = self.pruned or self._found_pruned

    def finish(self, end: Callable[[Any], str] | None = None) -> str | None:
        """Every epoch committed, the run's last checkpoints durable and, given ``end``, the
        job's end written by ``end(session)`` (its outcome returned). Once the writer has
        stored the checkpoints handed to it, this thread stores the last epoch's (and a best
        held in memory: a run stopped in the middle of an epoch by a cancel or a
        preemption has only that), then commits the epochs the recorder has not, their
        rows and the end in one transaction: a short run (a study's trial) ends in one
        commit instead of three on three threads. Raises what either thread failed with."""
        finals = [snap for snap in (self.held_best, self.final) if snap is not None]
        if self.final is not None:
            self.writer.supersede(self.final)
        self.held_best = self.final = None
        self.writer.wait()
        started = time.monotonic()
        stored = [(snap, self._store_files(snap)) for snap in finals]
        items = self.recorder.take()
        parameters = self.parameters
        outcome = None
        if end is not None:
            # The lease's heartbeats stop before the job's end is written (one after it
            # would find the job released and call its lease lost).
            self.lease.done.set()
            self.lease.join()
        if items or stored or end is not None:
            with session_scope() as session:
                # No budget check: the run has ended (it stopped for the budget already, or
                # its end is the same whatever the check would find).
                stale = (
                    self._write_epochs(session, items, parameters, budget=False) if items else []
                )
                doomed = [
                    row for snap, files in stored for row in self._write_row(session, snap, files)
                ]
                self._take_findings()
                outcome = end(session) if end is not None else None
            if items:
                self._epochs_committed(parameters, stale)
            if stored:  # the time of one, for the cadence
                self._checkpoint_committed((time.monotonic() - started) / len(stored), doomed)
        self._take_findings()
        return outcome

    def abandon(self) -> None:
        """For a run that ends with an error of its own: the epochs and the checkpoints
        handed off are kept (a retry resumes from them), their errors logged."""
        try:
            self._hand_over_best()
            if self.final is not None:
                self.writer.put(self.final, self.final.epoch)
                self.final = None
        except Exception:
            log.exception("job %s: its last checkpoints could not be handed over", self.job_id)
        self.recorder.drain()
        self.writer.drain()

    def close(self) -> None:
        self.recorder.close()
        self.writer.close()

    def _holding(self) -> Any:
        """An UPDATE of the job's row while this run holds its lease (no row: it lost it)."""
        return update(Job).where(
            Job.id == self.job_id, Job.worker == self.lease.worker, Job.status == JobStatus.RUNNING
        )

    def _commit_epochs(self, items: list[EpochItem]) -> None:
        """On the recorder thread: the epochs' metrics and the job's progress, one
        transaction (plain statements: this runs every few milliseconds for small models)."""
        parameters = self.parameters
        with session_scope() as session:
            if session.get_bind().dialect.name == "postgresql":
                # Not waited for on disk: a database crash loses at most the last moments'
                # epochs, which a resume redoes from the last checkpoint anyway (whose row
                # is committed durably, by the writer or with the job's end).
                session.execute(text("SET LOCAL synchronous_commit = off"))
            stale = self._write_epochs(session, items, parameters)
        self._epochs_committed(parameters, stale)

    def _epochs_committed(self, parameters: dict[str, int] | None, stale: list[Any]) -> None:
        self._redo_cleared = True
        if self.parameters is parameters:
            self.parameters = None  # recorded
        self._delete_files(stale)

    def _write_epochs(
        self,
        session: Any,
        items: list[EpochItem],
        parameters: dict[str, int] | None,
        *,
        budget: bool = True,
    ) -> list[Any]:
        """The epochs' statements (``budget``: with the owner's budget checked, see
        ``_check_budget``); the rows of checkpoints they replace (their files are deleted
        once committed)."""
        records = [item.record for item in items]
        last = records[-1]
        values: dict[str, Any] = {
            "epoch": last.epoch,
            "last_value": finite(last.value),
            "patience_wait": last.wait,
            "runtime_seconds": func.coalesce(Job.runtime_seconds, 0.0)
            + sum(item.seconds for item in items),
            "heartbeat_at": now(),
        }
        if not self.best_events:
            values.update(best_epoch=last.best_epoch, best_value=finite(last.best_value))
        if parameters is not None:
            values["parameters"] = parameters
        diagnoses = [r.diagnosis for r in records if r.diagnosis is not None]
        if diagnoses:
            values["diagnosis"] = diagnoses[-1]
        found = (finite(r.metrics.get("peak_memory_bytes")) for r in records)
        peaks = [peak for peak in found if peak is not None]
        if peaks:  # CUDA only; the most over every attempt
            peak = int(max(peaks))
            kept = Job.peak_memory_bytes
            values["peak_memory_bytes"] = case((kept.is_(None) | (kept < peak), peak), else_=kept)
        # The epochs' durations, counted as they commit (store/counters.py).
        durations = (finite(r.metrics.get("epoch_seconds")) for r in records)
        counted = [seconds for seconds in durations if seconds is not None]
        held = session.execute(
            self._holding().values(values).execution_options(synchronize_session=False)
        ).rowcount
        if not held:
            self.lease.lost.set()
            raise LeaseLost(self.job_id)  # rolls back: the new holder redoes the epochs
        if self.best_events:
            self._record_bests(session, records)
        stale: list[Any] = []
        if not self._redo_cleared:
            stale = self._clear_redone(session, records[0].epoch)
        rows = [
            dict(job_id=self.job_id, epoch=r.epoch, step=0, name=name, value=finite(value))
            for r in records
            for name, value in r.metrics.items()
        ]
        session.execute(insert(Metric), rows)
        counters.count_epochs(session, counter_source(self.lease.worker), counted)
        if budget:
            self._check_budget(session)
        if self.trial:
            for record in records:
                if self._found_pruned is None and self.pruned is None and record.stop is None:
                    self._found_pruned = studies.prune(
                        session, self.job_id, record.epoch, self.total_epochs
                    )
        return stale

    def _record_bests(self, session: Any, records: list[EpochRecord]) -> None:
        """The job's best epoch, set for each new best of the batch with a flush each: the
        ORM's change tracking records a ``best`` webhook event for each (store/webhooks.py)."""
        job = session.get_one(Job, self.job_id, populate_existing=True)
        for record in records:
            if record.is_best:
                job.epoch, job.best_epoch = record.epoch, record.best_epoch
                job.best_value = finite(record.best_value)
                session.flush()
        last = records[-1]
        job.epoch, job.best_epoch, job.best_value = (
            last.epoch,
            last.best_epoch,
            finite(last.best_value),
        )

    def _clear_redone(self, session: Any, first: int) -> list[Any]:
        """This attempt's first commit replaces what an earlier attempt wrote of its first
        epoch and of every later one (a resume redoes the epochs after its checkpoint)."""
        session.execute(delete(Metric).where(Metric.job_id == self.job_id, Metric.epoch >= first))
        stale = session.execute(
            select(Checkpoint.id, Checkpoint.weights_path, Checkpoint.state_path).where(
                Checkpoint.job_id == self.job_id, Checkpoint.epoch >= first
            )
        ).all()
        if stale:
            ids = [row.id for row in stale]
            session.execute(delete(Checkpoint).where(Checkpoint.id.in_(ids)))
            session.execute(  # this run writes it again, if still the best
                update(Job)
                .where(Job.id == self.job_id, Job.best_checkpoint_id.in_(ids))
                .values(best_checkpoint_id=None)
                .execution_options(synchronize_session=False)
            )
        return list(stale)

    def _store_checkpoint(self, snap: Snapshot) -> None:
        """On the writer thread: the files, stored, then (once its epoch is committed) the
        row that makes them durable."""
        started = time.monotonic()
        files = self._store_files(snap)
        self.recorder.wait(snap.epoch)
        with session_scope() as session:
            doomed = self._write_row(session, snap, files)
        self._checkpoint_committed(time.monotonic() - started, doomed)

    def _store_files(self, snap: Snapshot) -> StoredFiles:
        """Stored (in the folder, fsynced; or uploaded from memory) before a row names them.
        The attempt in the name: a worker presumed dead never overwrites the new run's."""
        stem = f"{self.job_id}/epoch-{snap.epoch:05d}-{self.attempt}"
        return store_files(self.artifacts, stem, snap.contents)

    def _write_row(self, session: Any, snap: Snapshot, files: StoredFiles) -> list[Checkpoint]:
        """The checkpoint's row, the job's best and retention; the rows retired (their
        files are deleted once committed)."""
        checkpoint_id = new_id()
        # The lease checked and the job's row locked by one UPDATE, which names the new
        # best; nothing if the lease was lost (the new holder sweeps the files).
        best = Job.best_checkpoint_id
        best_id = session.execute(
            self._holding()
            .values(best_checkpoint_id=checkpoint_id if snap.is_best else best)
            .returning(best)
            .execution_options(synchronize_session=False)
        ).one_or_none()
        if best_id is None:
            raise LeaseLost(self.job_id)
        session.execute(
            insert(Checkpoint),
            [
                dict(
                    id=checkpoint_id,
                    job_id=self.job_id,
                    epoch=snap.epoch,
                    value=finite(snap.value),
                    weights_path=files.weights_key,
                    state_path=files.state_key,
                    bytes=files.bytes,
                    sha256=files.sha256,
                )
            ],
        )
        return self._retire(session, best_id[0])

    def _checkpoint_committed(self, seconds: float, doomed: list[Checkpoint]) -> None:
        remember_write(seconds, self.model_parameters)  # for this worker's next jobs
        if self.cadence is not None:  # the default interval follows the writes' cost
            self.cadence.wrote(seconds)
        self._delete_files(doomed)

    def _delete_files(self, rows: list[Any]) -> None:
        for row in rows:
            self.artifacts.delete(row.weights_path)
            self.artifacts.delete(row.state_path)

    def _check_budget(self, session: Any) -> None:
        """On the recorder thread, at most every BUDGET_CHECK_SECONDS (the sum runs over
        all the owner's jobs)."""
        if time.monotonic() - self._budget_checked < BUDGET_CHECK_SECONDS:
            return
        self._budget_checked = time.monotonic()
        limit = limits_for(session, self.owner, self.settings).device_hours
        if limit is None:
            return
        used = used_device_hours(session, self.owner)
        if used >= limit:
            self._found_budget = (
                f"the owner's compute budget of {limit:g} device-hours is used up "
                f"({used:.3f} used); the job stopped after its last finished epoch"
            )

    def _retire(self, session: Any, best_id: str | None) -> list[Checkpoint]:
        """Delete the rows of checkpoints past keep_top_k; never the best or the last."""
        rows = list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == self.job_id)))
        last = max(rows, key=lambda row: row.epoch)
        sign = 1.0 if self.mode == "min" else -1.0

        def rank(row: Checkpoint) -> tuple[float, int]:
            # Missing (non-finite) values rank last; ties keep the earlier epoch.
            return (sign * row.value if row.value is not None else math.inf, row.epoch)

        keep = {row.id for row in sorted(rows, key=rank)[: self.keep_top_k]}
        keep |= {last.id, best_id}
        doomed = [row for row in rows if row.id not in keep]
        for row in doomed:
            session.delete(row)
        return doomed


def sweep_orphans(job_id: str, artifacts: Artifacts) -> None:
    """Remove files of this job that no checkpoint row names: files written before a crash
    stopped their row, and the temp files of a write a crash cut short."""
    with session_scope() as session:
        rows = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id))
        named = {path for row in rows for path in (row.weights_path, row.state_path)}
    for key in artifacts.keys(job_id):
        if key not in named:
            artifacts.delete(key)


def classify(exc: BaseException) -> str:
    """The failure class of an exception raised while running a job."""
    if isinstance(exc, torch.OutOfMemoryError):
        return OUT_OF_MEMORY
    if isinstance(exc, RankDied):  # a rank of a several-process job was killed
        return WORKER_LOST
    if isinstance(exc, NonFiniteLoss):
        return NON_FINITE_LOSS
    if isinstance(exc, TrainingError):
        return TRAINING_ERROR
    if isinstance(exc, OperationalError | DisconnectionError | PoolTimeoutError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        return CONNECTION
    if isinstance(exc, ConnectionError | TimeoutError):
        return CONNECTION
    return INTERNAL


def describe(failure: str, exc: BaseException) -> str:
    if failure == OUT_OF_MEMORY:
        return f"out of memory: {str(exc).splitlines()[0] if str(exc) else 'the device ran out'}"
    if failure in (NON_FINITE_LOSS, TRAINING_ERROR, WORKER_LOST):
        return str(exc)
    if failure == CONNECTION:
        reason = getattr(exc, "orig", None) or exc
        text = str(reason).strip().splitlines()
        return f"lost connection: {text[0] if text else reason.__class__.__name__}"
    return f"internal error: {exc.__class__.__name__}: {exc}"


def run_job(job_id: str, worker: str, settings: Settings | None = None) -> str:
    """Run the job to its end; the outcome: succeeded | failed | cancelled | skipped | lost.

    Raises RetryableFailure for a failure of a retried class (the caller retries the task).
    """
    settings = settings or get_settings()
    job = claim(job_id, worker, settings)
    if job is None:
        return "skipped"
    spec = JobSpec.model_validate(job.spec)
    artifacts = get_artifacts()
    lease = Lease(job_id, worker, settings.heartbeat_seconds)
    lease.start()
    hooks = WorkerHooks(job, lease, artifacts, spec.checkpoints.keep_top_k, settings)
    # A trial of a study that prunes; pruned before a restart, it stops at once.
    hooks.trial, hooks.pruned = studies.recorded_prune(job_id)
    try:
        if not hooks.first_run:
            sweep_orphans(job_id, artifacts)
        # Uploads and a backbone job that are missing or do not fit fail the job here, at
        # its start, with the reason (a TrainingError: never retried).
        resources = job_resources(spec, job.owner, artifacts)
        if spec.training.processes > 1:
            from worker import launch  # several ranks; rank 0 writes (worker/launch.py)

            result = launch.train(job, spec, worker, lease, hooks, resources)
        else:
            trainer = resume(spec, hooks, job_id, artifacts, resources, first=hooks.first_run)
            hooks.parameters = trainer.parameter_counts()
            hooks.model_parameters = sum(hooks.parameters.values())
            runtime = job.runtime_seconds or 0.0  # as claimed: only the lease holder adds to it
            hooks.limit_runtime(spec.training.max_runtime_seconds, runtime, trainer.epoch)
            hooks.start_clock()
            # One thread for a small step (worker/threads.py).
            with job_threads(trainer, settings.single_thread_below_flops):
                result = trainer.train()
        # Every epoch committed, the last checkpoint durable and the job's end written.
        outcome = hooks.finish(lambda session: _end(session, job_id, worker, result, hooks))
    except LeaseLost:
        log.warning("job %s: another worker holds it now; this run stops", job_id)
        return "lost"
    except Exception as exc:
        hooks.abandon()  # a checkpoint handed off is kept: a retry resumes from it
        failure = classify(exc)
        message = describe(failure, exc)
        if failure == INTERNAL:
            log.exception("job %s crashed", job_id)
        if failure in settings.retried_failures:
            log.warning("job %s: %s; it will be retried from its last checkpoint", job_id, message)
            raise RetryableFailure(failure, message, _release(job_id, worker)) from exc
        with session_scope() as session:
            diagnosis = getattr(exc, "diagnosis", None)
            _fail(session, job_id, worker, message, failure, diagnosis=diagnosis)
        return "failed"
    finally:
        hooks.close()
        lease.done.set()
        lease.join()
    if outcome not in ("lost", "preempted") and not hooks.first_run:
        sweep_orphans(job_id, artifacts)  # files a worker presumed dead wrote meanwhile
    return outcome or "lost"


def _end(session: Any, job_id: str, worker: str, result: FitResult, hooks: WorkerHooks) -> str:
    """The job's end after its run, in the transaction of its last epochs: its outcome."""
    if hooks.lease.lost.is_set():
        return "lost"
    if result.status == "cancelled" and PREEMPTED.is_set() and not hooks.stopped_itself():
        return "preempted"  # the task hands the job back (worker/tasks.py)
    if hooks.budget_used_up is not None and result.status == "cancelled":
        _fail(session, job_id, worker, hooks.budget_used_up, "budget", reason="budget")
        return "failed"
    stop = None
    if (
        hooks.runtime_used_up is not None
        and result.status == "cancelled"
        and not hooks.lease.cancelled.is_set()
    ):
        # It trained, and stopped at its own limit: a success, with its best checkpoint.
        result.status = "succeeded"
        stop = {
            "reason": "max_runtime",
            "rule": None,
            "epoch": result.last_epoch,
            "detail": hooks.runtime_used_up,
        }
    if (
        hooks.pruned is not None
        and result.status == "cancelled"
        and not hooks.lease.cancelled.is_set()
    ):
        # A study's pruner stopped it: a success, with its best checkpoint (worker/studies.py).
        result.status = "succeeded"
        stop = dict(hooks.pruned)
    return _succeed(session, job_id, worker, result, stop=stop)


def resume(
    spec: JobSpec,
    hooks: WorkerHooks,
    job_id: str,
    artifacts: Artifacts,
    resources: Resources | None = None,
    *,
    first: bool = False,
) -> Trainer:
    """A trainer set up from the spec, continuing after the job's last loadable checkpoint.

    A redelivered job continues where it stopped, not from scratch. Should the last
    checkpoint not load (its files damaged), the one before it is tried, and so on.
    resources: the uploads and backbone job the spec names (see worker.resources).
    first: the job's first run (``first_run``): no checkpoint to look for.
    """
    rows: list[Checkpoint] = []
    if not first:  # a first run has no checkpoint
        with session_scope() as session:
            rows = list(
                session.scalars(
                    select(Checkpoint)
                    .where(Checkpoint.job_id == job_id)
                    .order_by(Checkpoint.epoch.desc())
                )
            )
    trainer = Trainer(spec, hooks=hooks, resources=resources).setup()
    for row in rows:
        try:
            # Local copies (from an object store: temporary), the weights' sha256 checked.
            with (
                artifacts.fetch(row.weights_path, row.sha256) as weights,
                artifacts.fetch(row.state_path) as state,
            ):
                trainer.load_checkpoint(state, weights)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint: try the one before
            log.warning("job %s: checkpoint of epoch %d does not load: %s", job_id, row.epoch, exc)
            # A clean state for the next try.
            trainer = Trainer(spec, hooks=hooks, resources=resources).setup()
            continue
        log.info("job %s resumes after epoch %d", job_id, row.epoch)
        return trainer
    return trainer


def _runtime(job_id: str) -> float:
    with session_scope() as session:
        return session.scalar(select(Job.runtime_seconds).where(Job.id == job_id)) or 0.0


def _succeed(
    session: Any,
    job_id: str,
    worker: str,
    result: FitResult,
    *,
    stop: dict[str, Any] | None = None,
) -> str:
    """Write the job's end; ``stop`` replaces the result's own (a limit the worker applied)."""
    job = session.get_one(Job, job_id, with_for_update=True, populate_existing=True)
    if job.worker != worker:
        return "lost"
    status = JobStatus.CANCELLED if result.status == "cancelled" else JobStatus.SUCCEEDED
    stop = dict(stop) if stop is not None else result.stop.to_dict()
    stop.update(
        best_epoch=result.best_epoch,
        best_value=finite(result.best_value),
        patience_wait=job.patience_wait,
    )
    job.diagnosis = result.diagnosis or job.diagnosis
    job.warnings = result.warnings
    finish(session, job, status, stop=stop)
    return result.status


def _fail(
    session: Any,
    job_id: str,
    worker: str,
    message: str,
    failure: str,
    *,
    reason: str = "error",
    diagnosis: dict[str, Any] | None = None,
) -> None:
    job = session.get_one(Job, job_id, with_for_update=True, populate_existing=True)
    if job.worker != worker:
        return
    job.diagnosis = diagnosis or job.diagnosis
    stop = {
        "reason": reason,
        "rule": None,
        "failure": failure,
        "epoch": job.epoch,
        "detail": message,
    }
    finish(session, job, JobStatus.FAILED, error=message, stop=stop)


def _release(job_id: str, worker: str) -> datetime | None:
    """Give the lease back before a retry, so the retry need not wait for it to time out.
    Returns when the job was queued again (its ``unsent_since``), None if it was not.

    Best effort: after a lost connection this often fails too, and the lease then times out.
    """
    queued_at = now()
    try:
        with session_scope() as session:
            released = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.worker == worker)
                .values(
                    status=JobStatus.QUEUED, worker=None, heartbeat_at=None, unsent_since=queued_at
                )
            ).rowcount  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001
        log.warning("job %s: could not release its lease: %s", job_id, exc)
        return None
    return queued_at if released else None

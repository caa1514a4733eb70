"""Runs one job: claim it, train it with the core, write its epochs, checkpoints and end.

Every write is a short transaction of its own, so the API (which may share a SQLite file
with the worker) reads while the worker trains. An epoch's metrics, its checkpoint row and
the job's progress commit together; a checkpoint's files are written before its row and
deleted after it, and files left without a row by a crash are swept when the job ends.
"""

import logging
import math
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update

from core.errors import TrainingError
from core.results import EpochRecord, FitResult
from core.spec import JobSpec
from core.train import Trainer, TrainerHooks
from store.artifacts import LocalArtifacts, get_artifacts
from store.db import session_scope
from store.models import Checkpoint, Job, JobStatus, Metric

log = logging.getLogger(__name__)

# A lease whose heartbeat is older than this is taken to belong to a dead worker.
LEASE_TIMEOUT = timedelta(seconds=30)
HEARTBEAT_EVERY = 5.0
CANCEL_POLL_EVERY = 0.2


class JobNotFound(LookupError):
    pass


def now() -> datetime:
    return datetime.now(UTC)


def finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def claim(job_id: str, worker: str) -> Job | None:
    """Take the job's lease, or return None when there is nothing to run."""
    with session_scope() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise JobNotFound(f"job {job_id} does not exist")
        if job.status in JobStatus.TERMINAL:
            return None
        heartbeat = job.heartbeat_at
        if heartbeat is not None and heartbeat.tzinfo is None:  # SQLite keeps no zone
            heartbeat = heartbeat.replace(tzinfo=UTC)
        live = heartbeat is not None and now() - heartbeat < LEASE_TIMEOUT
        if job.status == JobStatus.RUNNING and live and job.worker != worker:
            log.info("job %s is held by %s; this delivery does nothing", job_id, job.worker)
            return None
        if job.cancel_requested:
            finish(session, job, JobStatus.CANCELLED, stop=_cancel_stop(job.epoch))
            return None
        job.status = JobStatus.RUNNING
        job.started_at = job.started_at or now()
        job.attempt += 1
        job.worker = worker
        job.heartbeat_at = now()
        return job


def _cancel_stop(epoch: int) -> dict[str, Any]:
    return {"reason": "cancelled", "rule": None, "epoch": epoch, "detail": "cancelled by the user"}


def finish(
    session: Any,
    job: Job,
    status: str,
    *,
    stop: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    job.status = status
    job.finished_at = now()
    job.stop = stop
    job.error = error
    job.worker = None
    job.heartbeat_at = None


class Lease(threading.Thread):
    """Heartbeats the job's lease and watches its cancel flag, off the training thread,
    so that the training loop only reads an Event at each step."""

    def __init__(self, job_id: str, worker: str) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.job_id, self.worker = job_id, worker
        self.cancelled = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        last_beat = 0.0
        clock = 0.0
        while not self.done.wait(CANCEL_POLL_EVERY):
            clock += CANCEL_POLL_EVERY
            try:
                with session_scope() as session:
                    if clock - last_beat >= HEARTBEAT_EVERY:
                        last_beat = clock
                        session.execute(
                            update(Job)
                            .where(Job.id == self.job_id, Job.worker == self.worker)
                            .values(heartbeat_at=now())
                        )
                    flag = session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id))
                if flag:
                    self.cancelled.set()
            except Exception:  # the database may blink; training goes on
                log.exception("lease update for job %s failed", self.job_id)


class WorkerHooks(TrainerHooks):
    def __init__(
        self, job_id: str, lease: Lease, artifacts: LocalArtifacts, keep_top_k: int, mode: str
    ) -> None:
        self.job_id, self.lease, self.artifacts = job_id, lease, artifacts
        self.keep_top_k, self.mode = keep_top_k, mode

    def should_stop(self) -> bool:
        return self.lease.cancelled.is_set()

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        files = trainer.save_checkpoint(
            self.artifacts.job_dir(self.job_id), f"epoch-{record.epoch:05d}"
        )
        with session_scope() as session:
            session.execute(
                delete(Metric).where(Metric.job_id == self.job_id, Metric.epoch >= record.epoch)
            )
            session.add_all(
                Metric(
                    job_id=self.job_id, epoch=record.epoch, step=0, name=name, value=finite(value)
                )
                for name, value in record.metrics.items()
            )
            checkpoint = Checkpoint(
                job_id=self.job_id,
                epoch=record.epoch,
                value=finite(record.value),
                weights_path=self.artifacts.relative(Path(files.weights_path)),
                state_path=self.artifacts.relative(Path(files.state_path)),
                bytes=files.bytes,
                sha256=files.sha256,
            )
            session.add(checkpoint)
            session.flush()
            job = session.get_one(Job, self.job_id)
            job.epoch = record.epoch
            job.last_value = finite(record.value)
            job.best_epoch = record.best_epoch
            job.best_value = finite(record.best_value)
            job.patience_wait = record.wait
            if record.is_best:
                job.best_checkpoint_id = checkpoint.id
            doomed = self._retire(session, job)
        for row in doomed:
            self.artifacts.delete(row.weights_path)
            self.artifacts.delete(row.state_path)

    def _retire(self, session: Any, job: Job) -> list[Checkpoint]:
        """Delete the rows of checkpoints past keep_top_k; never the best or the last."""
        rows = list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == self.job_id)))
        last = max(rows, key=lambda row: row.epoch)
        sign = 1.0 if self.mode == "min" else -1.0

        def rank(row: Checkpoint) -> tuple[float, int]:
            # Missing (non-finite) values rank last; ties keep the earlier epoch.
            return (sign * row.value if row.value is not None else math.inf, row.epoch)

        keep = {row.id for row in sorted(rows, key=rank)[: self.keep_top_k]}
        keep |= {last.id, job.best_checkpoint_id}
        doomed = [row for row in rows if row.id not in keep]
        for row in doomed:
            session.delete(row)
        return doomed


def sweep_orphans(job_id: str, artifacts: LocalArtifacts) -> None:
    """Remove files of this job that no checkpoint row names (left by a crash)."""
    with session_scope() as session:
        rows = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id))
        named = {path for row in rows for path in (row.weights_path, row.state_path)}
    for path in artifacts.job_dir(job_id).iterdir():
        if path.is_file() and artifacts.relative(path) not in named:
            path.unlink(missing_ok=True)


def run_job(job_id: str, worker: str) -> str:
    job = claim(job_id, worker)
    if job is None:
        return "skipped"
    spec = JobSpec.model_validate(job.spec)
    artifacts = get_artifacts()
    lease = Lease(job_id, worker)
    lease.start()
    try:
        hooks = WorkerHooks(job_id, lease, artifacts, spec.checkpoints.keep_top_k, job.mode)
        trainer = Trainer(spec, hooks=hooks)
        trainer.setup()
        resume_from(trainer, job_id, artifacts)
        result = trainer.train()
    except TrainingError as exc:
        _fail(job_id, str(exc), reason="error")
        return "failed"
    except Exception as exc:
        log.exception("job %s crashed", job_id)
        _fail(job_id, f"internal error: {exc.__class__.__name__}: {exc}", reason="error")
        return "failed"
    finally:
        lease.done.set()
        lease.join()
    _succeed(job_id, result)
    sweep_orphans(job_id, artifacts)
    return result.status


def resume_from(trainer: Trainer, job_id: str, artifacts: LocalArtifacts) -> None:
    """A redelivered job continues after its last checkpoint, not from scratch."""
    with session_scope() as session:
        last = session.scalars(
            select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.epoch.desc())
        ).first()
    if last is not None:
        log.info("job %s resumes after epoch %d", job_id, last.epoch)
        trainer.load_checkpoint(artifacts.path(last.state_path), artifacts.path(last.weights_path))


def _succeed(job_id: str, result: FitResult) -> None:
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        status = JobStatus.CANCELLED if result.status == "cancelled" else JobStatus.SUCCEEDED
        stop = result.stop.to_dict()
        stop.update(
            best_epoch=result.best_epoch,
            best_value=finite(result.best_value),
            patience_wait=job.patience_wait,
        )
        finish(session, job, status, stop=stop)


def _fail(job_id: str, message: str, *, reason: str) -> None:
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        finish(
            session,
            job,
            JobStatus.FAILED,
            error=message,
            stop={"reason": reason, "rule": None, "epoch": job.epoch, "detail": message},
        )

"""The sweeper: queues again the jobs whose worker died.

Redis gives an unacknowledged task back only after its visibility timeout (an hour by
default, so that long jobs are not delivered twice), so the service does not wait for it: a
job marked running whose heartbeat is older than the lease timeout has lost its worker, and
is sent to its queue again, to resume from its last checkpoint. A job already started
max_attempts times is failed instead, and a job whose cancel was asked for is cancelled
(each end records the job's status event, with the change: store/webhooks.py).

It sends again the jobs queued whose task message is not recorded as sent
``resend_grace_seconds`` after they were queued: their sender died between the commit and
the send (store/outbox.py). Taking such a job is a compare-and-set on its ``unsent_since``,
so one sweeper sends it; should that one die too, the job is sent after another grace.

It sends again the delivery task of each job whose webhook events are still open
``resend_grace_seconds`` after they were due (``resend_deliveries``): their task was never
sent, or was lost with the worker that took it (the embedded broker forgets a message once
it is taken), or their sender died mid-POST. A task sent twice posts each event once (each
POST is claimed first: worker/webhooks.py).

It also tops up the running studies (``studies.sweep``): a study whose worker died between
one trial's end and the next trial's making gets that trial at the next pass, and a study
whose trials have all ended is completed.

Every worker runs one (a thread in Celery's main process, started when the worker is ready);
each change is a compare-and-set on the job's attempt and heartbeat, so when several
sweepers see the same job, one of them acts. The sweeper uses an engine of its own that
keeps no connection open, so the pool processes Celery forks never inherit one.
"""

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from descent.settings import Settings
from store import outbox, webhooks
from store.models import Job, JobStatus
from worker import studies
from worker.runner import WORKER_LOST, _cancel_stop, _failed_values, _finish_values

log = logging.getLogger(__name__)

Send = Callable[[str, str], None]  # (job id, queue)


def sweep(sessions: sessionmaker[Session], send: Send, settings: Settings) -> list[str]:
    """One pass: the jobs whose worker died, the jobs queued but never sent, then the
    studies; returns the ids of the jobs sent again (in that order)."""
    requeued = _sweep_jobs(sessions, send, settings)
    resent = resend_unsent(sessions, send, settings)
    resend_deliveries(sessions, settings)
    studies.sweep(sessions, send, settings)
    return requeued + resent


def resend_deliveries(sessions: sessionmaker[Session], settings: Settings) -> list[str]:
    """Send a delivery task again for the jobs whose webhook events are overdue by the
    grace period (``webhooks.overdue``); returns their ids."""
    cutoff = datetime.now(UTC) - timedelta(seconds=settings.resend_grace_seconds)
    with sessions() as session:
        jobs = webhooks.overdue(session, cutoff)
    if jobs:
        log.warning("webhook events of %d job(s) overdue: their delivery is sent again", len(jobs))
        webhooks.notify(jobs)
    return jobs


def resend_unsent(sessions: sessionmaker[Session], send: Send, settings: Settings) -> list[str]:
    """Send again the queued jobs not recorded as sent within the grace period; returns
    their ids. A duplicate of a message that was sent after all is harmless."""
    cutoff = datetime.now(UTC) - timedelta(seconds=settings.resend_grace_seconds)
    with sessions() as session:
        unsent = session.execute(
            select(Job.id, Job.queue, Job.unsent_since)
            .where(Job.status == JobStatus.QUEUED, Job.unsent_since < cutoff)
            .order_by(Job.unsent_since)
        ).all()
    resent = []
    for job in unsent:
        taken_at = datetime.now(UTC)
        with sessions.begin() as session:
            taken = session.execute(
                update(Job)
                .where(
                    Job.id == job.id,
                    Job.status == JobStatus.QUEUED,
                    Job.unsent_since == job.unsent_since,
                )
                .values(unsent_since=taken_at)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
        if not taken:
            continue  # another sweeper took it, or it was sent, claimed or cancelled
        try:
            send(job.id, job.queue)
        except Exception:
            log.exception("job %s: could not be sent; tried again after the grace", job.id)
            continue
        outbox.mark_sent(sessions.begin, job.id, taken_at)
        log.warning("job %s: queued but never sent (its sender died); sent again", job.id)
        resent.append(job.id)
    return resent


def _sweep_jobs(sessions: sessionmaker[Session], send: Send, settings: Settings) -> list[str]:
    cutoff = datetime.now(UTC) - timedelta(seconds=settings.lease_timeout_seconds)
    stale_lease = or_(Job.heartbeat_at < cutoff, Job.heartbeat_at.is_(None))
    with sessions() as session:
        stale = session.execute(
            select(
                Job.id, Job.queue, Job.attempt, Job.worker, Job.epoch, Job.cancel_requested
            ).where(Job.status == JobStatus.RUNNING, stale_lease)
        ).all()
    requeued = []
    for job in stale:
        requeue, queued_at = False, datetime.now(UTC)
        values: dict[str, Any]
        if job.cancel_requested:
            values = _finish_values(JobStatus.CANCELLED, stop=_cancel_stop(job.epoch))
        elif WORKER_LOST not in settings.retried_failures:
            values = _failed_values(
                f"its worker ({job.worker}) was lost, and lost workers are not retried",
                WORKER_LOST,
                job.epoch,
            )
        elif job.attempt >= settings.max_attempts:
            values = _failed_values(
                f"its worker ({job.worker}) was lost on each of its {job.attempt} attempts; "
                f"it is not started again (max_attempts {settings.max_attempts})",
                WORKER_LOST,
                job.epoch,
            )
        else:
            values = {
                "status": JobStatus.QUEUED,
                "worker": None,
                "heartbeat_at": None,
                "unsent_since": queued_at,
            }
            requeue = True
        unchanged = (Job.status == JobStatus.RUNNING, Job.attempt == job.attempt, stale_lease)
        with sessions.begin() as session:
            if not requeue:
                if webhooks.end_job(session, job.id, unchanged, values):
                    log.warning("job %s: %s", job.id, values.get("error") or "cancelled")
                continue
            won = session.execute(
                update(Job)
                .where(Job.id == job.id, *unchanged)
                .values(**values)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
        if not won:
            continue
        try:
            send(job.id, job.queue)
        except Exception:
            # Not queued after all: mark it running with no heartbeat, so the next pass
            # tries again.
            log.exception("job %s: could not be queued again", job.id)
            with sessions.begin() as session:
                session.execute(
                    update(Job)
                    .where(Job.id == job.id, Job.status == JobStatus.QUEUED)
                    .values(status=JobStatus.RUNNING, heartbeat_at=None, unsent_since=None)
                )
            continue
        outbox.mark_sent(sessions.begin, job.id, queued_at)
        log.warning(
            "job %s: its worker %s was lost; queued again to resume after epoch %d",
            job.id,
            job.worker,
            job.epoch,
        )
        requeued.append(job.id)
    return requeued


class Sweeper(threading.Thread):
    def __init__(self, engine: Engine, send: Send, settings: Settings) -> None:
        super().__init__(name="descent-sweeper", daemon=True)
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.engine, self.send, self.settings = engine, send, settings
        self.stopping = threading.Event()

    def run(self) -> None:
        while True:
            try:
                sweep(self.sessions, self.send, self.settings)
            except Exception as exc:  # noqa: BLE001 - the database may be down; try again later
                log.warning("sweep failed: %s", exc)
            if self.stopping.wait(self.settings.sweep_seconds):
                return

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)
        self.engine.dispose()

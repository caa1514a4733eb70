"""Celery tasks. They take job ids only; the job's state lives in the database.

A redelivered task is normal: the job's lease decides whether this delivery runs it (see
worker/runner.py). A failure of a retried class (a lost database connection, by default)
is retried with a capped exponential backoff, and resumes from the job's last checkpoint.
"""

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from celery import shared_task
from celery.exceptions import Reject
from sqlalchemy import update

from descent.queue import TRAIN_TASK
from descent.settings import get_settings
from store import outbox
from store.db import session_scope
from store.models import Job, JobStatus, utcnow
from worker import exports, studies, webhooks  # noqa: F401  (exports, webhooks: tasks)
from worker.runner import (
    CONNECTION,
    PREEMPTED,
    RetryableFailure,
    classify,
    run_job,
    worker_identity,
)

log = logging.getLogger(__name__)


def backoff(retries: int, cap: float) -> float:
    return float(min(2**retries, cap))


# Top-ups after a job's end, one at a time, off the task: the worker takes its next job
# meanwhile (a study's next trial is already queued while its parallelism allows, and one
# sent from here wakes the worker at once: descent/broker.py). A top-up lost with the
# process is made by a sweeper's next pass (worker/studies.py).
_top_ups = ThreadPoolExecutor(max_workers=1, thread_name_prefix="study-top-up")


def _after_job(app, job_id: str) -> Future[None]:
    """Top up the owner's studies (worker/studies.py) on the top-up thread."""
    return _top_ups.submit(_top_up, app, job_id)


def _top_up(app, job_id: str) -> None:
    try:
        studies.after_job(job_id, lambda job, queue: app.send_task(TRAIN_TASK, [job], queue=queue))
    except Exception:
        log.exception("job %s: topping up its owner's studies failed", job_id)


# The worker's consumer of task messages, set when the worker is ready (worker/app.py).
consumer: Any = None


def stop_consuming() -> None:
    """Take no more tasks (a stopping worker: the job it hands back goes to another)."""
    if consumer is None or consumer.task_consumer is None:
        return
    try:
        consumer.task_consumer.cancel()
    except Exception as exc:  # noqa: BLE001 - the broker gives back what it delivers later
        log.warning("could not stop taking tasks: %s", exc)


def hand_back(app, job_id: str, worker: str) -> None:
    """A job stopped because its worker is stopping: queue it again at once, for another
    worker to resume from its last checkpoint (the epoch it was in is redone).

    Its lease is released first (a delivery to a worker that sees the lease held does
    nothing), and the attempt it used is not counted: a preemption is not a failure. This
    worker stops taking tasks before the job is sent, so that another worker gets it. If
    the broker cannot take it, the job is left as a lost worker's, for a sweeper."""
    with session_scope() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.worker != worker or job.status != JobStatus.RUNNING:
            return
        job.status, job.worker, job.heartbeat_at = JobStatus.QUEUED, None, None
        job.unsent_since = queued_at = utcnow()  # until it is sent (store/outbox.py)
        job.attempt = max(0, job.attempt - 1)
        queue, epoch = job.queue, job.epoch
    stop_consuming()
    try:
        app.send_task(TRAIN_TASK, args=[job_id], queue=queue)
    except Exception:
        log.exception("job %s: could not be queued again; a sweeper resumes it", job_id)
        with session_scope() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.worker.is_(None))
                .values(
                    status=JobStatus.RUNNING,
                    attempt=Job.attempt + 1,
                    heartbeat_at=None,
                    unsent_since=None,
                )
            )
        return
    outbox.mark_sent(session_scope, job_id, queued_at)
    log.warning("job %s: the worker is stopping; queued again to resume after epoch %d",
                job_id, epoch)  # fmt: skip


@shared_task(name=TRAIN_TASK, bind=True)
def train(self, job_id: str) -> str:
    settings = get_settings()
    worker = worker_identity(self.request.hostname or "worker")
    if PREEMPTED.is_set():
        # Delivered while this worker stops: given back for another worker, untouched.
        stop_consuming()
        raise Reject("this worker is stopping", requeue=True)
    try:
        outcome = run_job(job_id, worker=worker, settings=settings)
    except RetryableFailure as exc:
        failure: Exception = exc
    except Exception as exc:
        # Claiming or ending the job needs the database too: a lost connection there is
        # retried the same way (the attempt limit is kept by the claim).
        if classify(exc) != CONNECTION or CONNECTION not in settings.retried_failures:
            raise
        failure = exc
    else:
        log.info("job %s: %s", job_id, outcome)
        if outcome == "preempted":
            hand_back(self.app, job_id, worker)
        else:
            _after_job(self.app, job_id)
        return outcome
    countdown = backoff(self.request.retries, settings.retry_backoff_max_seconds)
    log.warning("job %s: %s; retrying in %.0f s", job_id, failure, countdown)
    retry = self.retry(exc=failure, countdown=countdown, max_retries=None, throw=False)
    # Sent (it raises if not): a job queued again for it is no longer unsent.
    outbox.mark_sent(session_scope, job_id, getattr(failure, "unsent_since", None))
    raise retry

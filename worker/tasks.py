"""Celery tasks. They take job ids only; the job's state lives in the database.

A redelivered task is normal: the job's lease decides whether this delivery runs it (see
worker/runner.py). A failure of a retried class (a lost database connection, by default)
is retried with a capped exponential backoff, and resumes from the job's last checkpoint.
"""

import logging

from celery import shared_task

from descent.queue import TRAIN_TASK
from descent.settings import get_settings
from worker import exports, studies  # noqa: F401  (exports registers its task)
from worker.runner import CONNECTION, RetryableFailure, classify, run_job, worker_identity

log = logging.getLogger(__name__)


def backoff(retries: int, cap: float) -> float:
    return float(min(2**retries, cap))


def _after_job(app, job_id: str) -> None:  # type: ignore[no-untyped-def]
    """Top up the owner's studies (worker/studies.py): never fails the training task."""
    try:
        studies.after_job(job_id, lambda job, queue: app.send_task(TRAIN_TASK, [job], queue=queue))
    except Exception:
        log.exception("job %s: topping up its owner's studies failed", job_id)


@shared_task(name=TRAIN_TASK, bind=True)
def train(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
    settings = get_settings()
    worker = worker_identity(self.request.hostname or "worker")
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
        _after_job(self.app, job_id)
        return outcome
    countdown = backoff(self.request.retries, settings.retry_backoff_max_seconds)
    log.warning("job %s: %s; retrying in %.0f s", job_id, failure, countdown)
    raise self.retry(exc=failure, countdown=countdown, max_retries=None)

"""Celery tasks. They take job ids only; the job's state lives in the database."""

import logging

from celery import shared_task

from descent.queue import TRAIN_TASK
from worker.runner import run_job

log = logging.getLogger(__name__)


@shared_task(name=TRAIN_TASK, bind=True)
def train(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
    outcome = run_job(job_id, worker=self.request.hostname or "worker")
    log.info("job %s: %s", job_id, outcome)
    return outcome

"""Sending training tasks to the broker, by name: the API never imports the worker or torch."""

import threading
from collections.abc import Iterable

from celery import Celery

from descent.queue import TRAIN_TASK, WEBHOOK_TASK, make_celery
from descent.settings import Settings

# A broker that is down should fail a submit within about a second, not hang it.
PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}


class TaskQueue:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._celery: Celery | None = None
        self._lock = threading.Lock()

    @property
    def celery(self) -> Celery:
        # Made on first use, so an API that only reads never opens a broker connection.
        with self._lock:
            if self._celery is None:
                self._celery = make_celery(self._settings)
            return self._celery

    def send_training(self, job_id: str, queue: str) -> None:
        self.celery.send_task(
            TRAIN_TASK, args=[job_id], queue=queue, retry=True, retry_policy=PUBLISH_RETRY_POLICY
        )

    def send_webhooks(self, job_ids: Iterable[str]) -> None:
        """The task that posts each job's new webhook events (a job cancelled while queued)."""
        for job_id in job_ids:
            self.celery.send_task(
                WEBHOOK_TASK,
                args=[job_id],
                queue=self._settings.cpu_queue,
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
            )

    def close(self) -> None:
        with self._lock:
            if self._celery is not None:
                self._celery.close()
                self._celery = None

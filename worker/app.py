"""The worker's Celery app: ``celery -A worker.app worker -Q cpu`` (or ``-Q gpu``)."""

from descent.queue import make_celery

celery_app = make_celery()

# Registers the tasks, and imports torch once here, at worker start, not per job.
import worker.tasks  # noqa: E402,F401

"""The worker's Celery app: ``celery -A worker.app worker -Q cpu`` (or ``-Q gpu``)."""

from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from descent.queue import TRAIN_TASK, make_celery
from descent.settings import get_settings

celery_app = make_celery()

# torch is imported once here, at worker start, not per job. torch.optim imports
# torch._dynamo (and sympy) on the first optimizer it builds: about a second that would
# otherwise land on the first job of every worker process.
import torch._dynamo  # noqa: E402,F401

import worker.gpu  # noqa: E402,F401  (gpu-queue workers need CUDA; DESCENT_WORKER_THREADS)
import worker.tasks  # noqa: E402,F401  (registers the tasks)

_sweeper: Any = None


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    """In each pool process Celery forks: never reuse a connection of the parent's."""
    from store import db

    if db.get_engine.cache_info().currsize:
        db.get_engine().dispose(close=False)


@worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    """Each worker sweeps for jobs whose worker died (see worker/sweeper.py)."""
    global _sweeper
    from store.db import make_engine
    from worker.sweeper import Sweeper

    settings = get_settings()
    app = getattr(sender, "app", None) or celery_app

    def send(job_id: str, queue: str) -> None:
        app.send_task(TRAIN_TASK, args=[job_id], queue=queue)

    _sweeper = Sweeper(make_engine(settings.database_url, pooled=False), send, settings)
    _sweeper.start()


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stop()

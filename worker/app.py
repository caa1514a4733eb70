"""The worker's Celery app: ``celery -A worker.app worker --pool solo -Q cpu`` (or ``-Q gpu``),
as ``descent worker`` starts it: each job runs in the worker's own process, one at a time."""

import gc
import logging
from typing import Any

from celery.signals import (
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from descent.queue import TRAIN_TASK, make_celery
from descent.settings import get_settings

celery_app = make_celery()

# torch is imported once here, at worker start, not per job. torch.optim imports
# torch._dynamo (and sympy) on the first optimizer it builds: about a second that would
# otherwise land on the first job of every worker process.
import torch._dynamo  # noqa: E402,F401

import worker.gpu  # noqa: E402,F401  (gpu-queue workers need CUDA; DESCENT_WORKER_THREADS)
import worker.tasks  # noqa: E402,F401  (registers the tasks)
from worker.runner import PREEMPTED  # noqa: E402

log = logging.getLogger(__name__)
_sweeper: Any = None


@worker_shutting_down.connect
def _preempt(how: str = "", **_: Any) -> None:
    """SIGTERM or SIGINT (Celery's warm shutdown, which waits for the running task): the
    running job stops at its next step and is queued again for another worker (see
    worker/tasks.py). Runs in the signal handler: it only sets an event."""
    if how == "Warm":
        PREEMPTED.set()


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    """In each pool process Celery forks: never reuse a connection of the parent's (the
    solo pool forks none, and sends this once in the worker itself)."""
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
    if hasattr(sender, "task_consumer"):
        worker.tasks.consumer = sender  # so that a stopping worker can stop taking tasks
    app = getattr(sender, "app", None) or celery_app

    def send(job_id: str, queue: str) -> None:
        app.send_task(TRAIN_TASK, args=[job_id], queue=queue)

    engine = make_engine(settings.database_url, pooled=False)
    node = getattr(sender, "hostname", None)
    if node:
        try:
            release_dead_leases(engine, node)
        except Exception as exc:  # noqa: BLE001 - the leases then time out as usual
            log.warning("could not check the leases of this node's earlier workers: %s", exc)
    _sweeper = Sweeper(engine, send, settings)
    _sweeper.start()
    # Everything imported so far (torch, scipy, sklearn) lives as long as the process: out of
    # the garbage collector's sight, neither each full collection nor the interpreter's exit
    # walks it again (that walk made a warm shutdown take seconds more).
    gc.freeze()


def release_dead_leases(engine: Any, node: str) -> list[str]:
    """A worker started again on this node (after a crash, or the OOM killer) releases the
    leases its dead predecessors held, so that the sweeper resumes their jobs at once instead
    of after the lease timeout. Returns the ids of those jobs."""
    from sqlalchemy import select, update

    from store.models import Job, JobStatus
    from worker.runner import _holder_is_dead_here, worker_identity

    me = worker_identity(node)
    released = []
    with engine.begin() as conn:
        held = conn.execute(
            select(Job.id, Job.worker).where(
                Job.status == JobStatus.RUNNING, Job.worker.startswith(f"{node}/", autoescape=True)
            )
        ).all()
        for job_id, holder in held:
            if not _holder_is_dead_here(holder, me):
                continue
            conn.execute(
                update(Job)
                .where(Job.id == job_id, Job.worker == holder, Job.status == JobStatus.RUNNING)
                .values(heartbeat_at=None)
            )
            log.warning("job %s: its worker %s is gone; the sweeper resumes it", job_id, holder)
            released.append(job_id)
    return released


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stop()

"""What a worker checks and sets at start, before it takes a job: a GPU worker (its first
queue is the gpu queue) has a usable CUDA device, or refuses to start with the reason; and
torch uses the threads it is given (DESCENT_WORKER_THREADS), not every core of the host.

Imported once by worker/app.py, which registers the signal handlers below.
"""

import sys
from typing import Any

import torch
from celery.signals import worker_init, worker_process_init

from descent.settings import get_settings
from worker.memory import keep_freed_memory


def cuda_problem() -> str | None:
    """Why this process cannot train on CUDA, or None when it can."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a build without CUDA"
    try:
        torch.cuda.init()  # raises with the driver's reason ("too old", "no driver", ...)
    except Exception as exc:  # any failure is a reason not to start
        return str(exc).strip().splitlines()[0] or type(exc).__name__
    if torch.cuda.device_count() == 0:
        return "no CUDA device is visible (CUDA_VISIBLE_DEVICES, or the container's devices)"
    return None


def refusal(queues: list[str]) -> str | None:
    """Why a worker on ``queues`` must not start, or None.

    A worker whose first queue is the gpu queue (``--queues gpu`` or ``gpu,cpu``) is a GPU
    worker: it needs CUDA. One that lists the gpu queue after another (the embedded
    ``cpu,gpu``) may run without it, and a cuda job then fails with the reason.
    """
    settings = get_settings()
    if not queues or queues[0] != settings.gpu_queue:
        return None
    problem = cuda_problem()
    if problem is None:
        return None
    return (
        f"descent: this worker takes the {settings.gpu_queue!r} queue first, but no CUDA device "
        f"is usable: {problem}. torch {torch.__version__} needs a driver for CUDA "
        f"{torch.version.cuda} or newer (a driver older than the image's CUDA build is the usual "
        f"cause). Not starting, rather than train on the CPU while holding the GPU; run it with "
        f"--queues {settings.cpu_queue} to train on the CPU."
    )


def apply_threads() -> None:
    """torch's threads (DESCENT_WORKER_THREADS) and malloc's kept memory
    (DESCENT_WORKER_MALLOC_KEEP_MB, worker/memory.py) for this worker process."""
    settings = get_settings()
    if settings.worker_threads > 0:
        torch.set_num_threads(settings.worker_threads)
    keep_freed_memory(settings.worker_malloc_keep_mb)


@worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    reason = refusal(list(sender.app.amqp.queues.consume_from))
    if reason:
        print(reason, file=sys.stderr, flush=True)  # noqa: T201
        # SystemExit passes through Celery's signal dispatch (it catches Exception only):
        # the worker stops here, before it connects to the broker.
        raise SystemExit(1)
    apply_threads()


@worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    apply_threads()  # each pool process Celery forks

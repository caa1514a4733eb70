"""GPU workers: one that cannot use CUDA refuses to start with the reason; a worker takes its
queues in the order given (a GPU worker takes cpu jobs only while no cuda job waits); torch
uses the threads it is given."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from kombu import Consumer, Queue

from descent.queue import make_celery
from descent.settings import Settings
from worker.gpu import _on_process_init, cuda_problem, refusal

ROOT = Path(__file__).resolve().parents[2]

needs_no_cuda = pytest.mark.skipif(
    torch.cuda.is_available(), reason="CUDA is usable here: nothing to refuse"
)


@needs_no_cuda
def test_cuda_problem_gives_the_reason() -> None:
    problem = cuda_problem()
    assert problem
    if torch.version.cuda is not None:
        assert "driver" in problem.lower() or "device" in problem.lower()


@needs_no_cuda
def test_a_worker_whose_first_queue_is_gpu_refuses_without_cuda(
    configure: Callable[..., Settings], tmp_path: Path
) -> None:
    configure(DESCENT_DATA_DIR=str(tmp_path))
    for queues in (["gpu"], ["gpu", "cpu"]):
        reason = refusal(queues)
        assert reason and cuda_problem() in reason, queues
        assert "--queues cpu" in reason
    # CPU workers, and the embedded worker that also answers cuda jobs (failing them with
    # the reason), start as before.
    for queues in (["cpu"], ["cpu", "gpu"]):
        assert refusal(queues) is None, queues


@needs_no_cuda
def test_descent_worker_on_the_gpu_queue_exits_with_the_reason(tmp_path: Path) -> None:
    env = {**os.environ, "DESCENT_DATA_DIR": str(tmp_path / "data")}
    for key in ("DATABASE_URL", "DESCENT_DATABASE_URL", "REDIS_URL", "DESCENT_BROKER_URL"):
        env.pop(key, None)
    result = subprocess.run(
        [sys.executable, "-m", "descent", "worker", "--queues", "gpu,cpu", "--name", "gpu@%h"],
        capture_output=True, text=True, timeout=180, cwd=ROOT, env=env,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "no CUDA device is usable" in result.stderr
    assert cuda_problem() in result.stderr
    assert "ready." not in result.stderr  # it never consumed


def test_worker_threads_set_torch_threads(configure: Callable[..., Settings]) -> None:
    before = torch.get_num_threads()
    wanted = before + 1  # not what torch has already (the tests run torch on one thread)
    try:
        configure(DESCENT_WORKER_THREADS=str(wanted))
        _on_process_init()
        assert torch.get_num_threads() == wanted
        torch.set_num_threads(before)
        configure(DESCENT_WORKER_THREADS="0")  # the default: torch's own is left alone
        _on_process_init()
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_a_worker_takes_its_first_queue_first(
    configure: Callable[..., Settings], tmp_path: Path, redis_broker: tuple[str, str]
) -> None:
    url, prefix = redis_broker
    # Queues of its own: a worker of another test on this run's key space takes none of them.
    settings = configure(
        DESCENT_DATA_DIR=str(tmp_path),
        REDIS_URL=url,
        DESCENT_BROKER_KEY_PREFIX=f"{prefix}order-",
    )
    app = make_celery(settings)
    sent = ["cpu-1", "cpu-2", "gpu-1", "gpu-2", "cpu-3"]
    for job in sent:
        app.send_task("training.run", args=[job], queue=job.split("-")[0])
    received: list[str] = []
    with app.connection_for_read() as conn:
        # As the GPU worker consumes (`--queues gpu,cpu`), one message at a time.
        queues = [Queue(settings.gpu_queue), Queue(settings.cpu_queue)]
        with Consumer(conn, queues=queues, accept=["json"], prefetch_count=1) as consumer:

            def take(body: Any, message: Any) -> None:
                args, _kwargs, _embed = body  # Celery's task message, protocol 2
                received.append(args[0])
                message.ack()

            consumer.register_callback(take)
            while len(received) < len(sent):
                conn.drain_events(timeout=30)
    # Both gpu jobs first, although cpu jobs were queued before them; in turn, it took
    # gpu-1, cpu-1, gpu-2, cpu-2.
    assert received == ["gpu-1", "gpu-2", "cpu-1", "cpu-2", "cpu-3"]

"""`descent serve` survives losing the process that trains, as to the kernel's OOM killer.

The test kills (SIGKILL) the process that runs jobs — the worker's pool child where there is
one, else the worker itself — three times, idle and busy. After each kill the next job runs,
and a job killed mid-training resumes from its checkpoint (one attempt more) and succeeds.
Only processes this test started are killed: `descent serve` and what /proc lists under it.
"""

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.service import Service, children, is_celery, running, start_embedded
from tests.timing import scaled, wait_for

NEXT_JOB: dict[str, Any] = {
    "name": "next",
    "dataset": {"name": "iris"},
    "model": {"arch": "mlp", "hidden": [8]},
    "optimizer": {"name": "adam", "lr": 0.01},
    "training": {"epochs": 2, "batch_size": 16, "device": "cpu"},
}


def long_job() -> dict[str, Any]:
    """Trains until its training time (over all its attempts) passes two seconds, scaled
    with the machine: killed at epoch 2 (a few tenths of a second in), it cannot have ended,
    and it ends a success."""
    return {
        "name": "killed",
        "dataset": {"name": "digits", "val_fraction": 0.2, "seed": 0},
        "model": {"arch": "mlp", "hidden": [32]},
        "optimizer": {"name": "adam", "lr": 0.005},
        "training": {
            "epochs": 10_000,
            "batch_size": 64,
            "seed": 1,
            "device": "cpu",
            "max_runtime_seconds": scaled(2),
        },
        "checkpoints": {"keep_top_k": 1, "min_interval_seconds": 0},  # each epoch's
    }


STOPPED = "the worker stopped (killed by SIGKILL); starting it again in"


def worker_pid(service: Service) -> int | None:
    """The worker `descent serve` runs now, if one runs."""
    workers = [pid for pid in children(service.processes[0].pid) if is_celery(pid)]
    assert len(workers) <= 1, workers
    return workers[0] if workers else None


def training_pid(worker: int) -> int:
    """The process that runs the worker's jobs: its pool child if it has one, else itself."""
    pool = [pid for pid in children(worker) if is_celery(pid)]
    return pool[0] if pool else worker


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    yield from running(start_embedded(tmp_path_factory.mktemp("restart")))


def test_the_worker_survives_losing_its_training_process(serve: Service) -> None:
    restarts = 0
    for kill in ("idle", "busy", "idle"):
        worker = wait_for("a running worker", lambda: worker_pid(serve), 60, detail=serve.tail)
        killed = None
        if kill == "busy":
            killed = serve.submit(long_job())
            serve.wait(killed["id"], until=lambda j: j["epoch"] >= 2, what="to pass epoch 2")
        target = training_pid(worker)
        os.kill(target, signal.SIGKILL)
        if target == worker:  # the solo pool: `descent serve` starts a worker again
            restarts += 1
            wait_for("serve to notice the worker's death",
                     lambda n=restarts: serve.log_text().count(STOPPED) == n, 30,
                     detail=serve.tail)  # fmt: skip

        # The next job runs.
        job = serve.submit(NEXT_JOB)
        final = serve.wait(job["id"], timeout=120, what=f"to run after a kill ({kill})")
        assert final["status"] == "succeeded" and final["attempt"] == 1, final

        if killed is not None:
            # The killed job resumes from its last checkpoint, in one attempt more.
            final = serve.wait(killed["id"], timeout=180, what="to resume and end")
            assert final["status"] == "succeeded" and final["attempt"] == 2, final
            assert final["stop"]["reason"] == "max_runtime", final["stop"]
            epochs = [item["epoch"] for item in serve.metrics(killed["id"])]
            assert epochs == list(range(1, final["epoch"] + 1)) and len(epochs) > 2
            assert f"job {killed['id']} resumes after epoch" in serve.log_text()

    assert restarts == 3
    # A new worker process each time, and each one started and consumed.
    assert serve.log_text().count("ready.") >= 4
    assert worker_pid(serve) != worker

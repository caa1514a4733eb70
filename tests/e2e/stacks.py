"""The service as production runs it, for tests that start and kill its workers: the API
started with ``descent api`` (after ``descent migrate``, the commands compose runs) on
PostgreSQL and Redis (and S3 where the environment says so), and ``descent worker``
processes the tests start, one by one, by name.
"""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, text

from tests.e2e.service import ROOT, Service, base_env, free_port, make_token
from tests.timing import wait_for

# Leases that time out in seconds, and sweeps that notice it at once.
LEASE = {
    "DESCENT_LEASE_TIMEOUT_SECONDS": "3",
    "DESCENT_HEARTBEAT_SECONDS": "0.5",
    "DESCENT_SWEEP_SECONDS": "0.5",
    "DESCENT_RETRY_BACKOFF_MAX_SECONDS": "2",
}

# A tiny deterministic CPU job; dropout and shuffling make every RNG state matter.
RESUME_SPEC: dict[str, Any] = {
    "name": "resume",
    "dataset": {"name": "digits", "val_fraction": 0.2, "seed": 0},
    "model": {"arch": "mlp", "hidden": [64], "dropout": 0.2},
    "optimizer": {"name": "adam", "lr": 0.005},
    "schedule": {"name": "inverse_time", "decay": 0.05},
    "training": {"epochs": 10, "batch_size": 16, "seed": 1, "device": "cpu"},
    # A checkpoint every epoch: a kill a few tenths of a second in finds one to resume from.
    "checkpoints": {"keep_top_k": 2, "min_interval_seconds": 0},
}


class Stack(Service):
    """The API as production starts it, and workers the tests start and kill."""

    root: Path = Path()
    database_url: str = ""  # where ``row`` reads the jobs table

    def start_worker(
        self, name: str, env: dict[str, str] | None = None, *, own_folder: bool = False
    ) -> subprocess.Popen[bytes]:
        """``descent worker``, as production starts it (one job at a time, in its process),
        once it consumes. ``own_folder``: a data folder of its own (as on another host)."""
        folder = {"DESCENT_DATA_DIR": str(self.root / name)} if own_folder else {}
        process = self.start(
            name, "-m", "descent", "worker", "--queues", "cpu,gpu", "--name", f"{name}@%h",
            env=folder | (env or {}),
        )  # fmt: skip

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"worker {name} exited {process.returncode}\n{self.tail()}")
            return "ready." in self.log(name)

        wait_for(f"worker {name} to start", ready, 120, interval=0.1, detail=self.tail)
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def row(self, job_id: str) -> dict[str, Any]:
        """The job's row, read from the database directly (what the API does not show)."""
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                row = conn.execute(
                    text("SELECT worker, attempt, status FROM jobs WHERE id = :id"), {"id": job_id}
                ).one()
                epochs = conn.execute(
                    text("SELECT epoch, count(*) FROM metrics WHERE job_id = :id GROUP BY epoch"),
                    {"id": job_id},
                ).all()
        finally:
            engine.dispose()
        return {"worker": row[0], "attempt": row[1], "status": row[2], "rows": dict(epochs)}


S = TypeVar("S", bound=Stack)


@contextmanager
def production_stack(root: Path, env: dict[str, str], user: str, kind: type[S]) -> Iterator[S]:
    """``descent migrate``, a token of ``user`` and ``descent api``, as a ``kind`` of Stack
    in ``root`` (data folder ``root/data``), with ``env`` (``DATABASE_URL``, ``REDIS_URL``,
    ...) over this process's environment; no worker yet. Stopped, with its workers, at the
    end."""
    env = base_env(root / "data") | env
    port = free_port()
    stack = kind(f"http://127.0.0.1:{port}", env, root)
    stack.root, stack.database_url = root, env["DATABASE_URL"]
    try:
        subprocess.run([sys.executable, "-m", "descent", "migrate"], cwd=ROOT, env=env, check=True)
        stack.authorize(make_token(env, user))
        stack.start("api", "-m", "descent", "api", "--host", "127.0.0.1", "--port", str(port))
        stack.wait_healthy()
        yield stack
    finally:
        stack.stop()


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the process's group (as the OOM killer, or a host that is gone)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def reference_run(spec: dict[str, Any]) -> dict[int, dict[str, float]]:
    """The spec run without interruption, in process, with the core alone: each epoch's
    metrics."""
    from core.train import Trainer

    result = Trainer(spec).setup().train()
    return {record.epoch: dict(record.metrics) for record in result.history}


def assert_same_metrics(
    stack: Service, job_id: str, reference: dict[int, dict[str, float]], tolerance: float
) -> float:
    """The job's stored metrics are the reference run's, each within ``tolerance`` (wall
    times aside); returns the largest gap."""
    got = {item["epoch"]: item["metrics"] for item in stack.metrics(job_id)}
    assert sorted(got) == sorted(reference)
    gaps = [
        abs(got[epoch][name] - value)
        for epoch, metrics in reference.items()
        for name, value in metrics.items()
        if name != "epoch_seconds"
    ]
    assert gaps and max(gaps) <= tolerance, max(gaps)
    return max(gaps)

"""What the worker's reliability, writer and cadence tests share: a small job whose resumed
run only matches an uninterrupted one if every RNG state comes back, reads of its rows, the
comparison with an uninterrupted run, leases, and worker processes that die mid-job."""

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from core.spec import JobSpec
from core.train import Trainer
from store.artifacts import get_artifacts
from store.db import session_scope
from store.models import Checkpoint, Job, JobStatus, Metric, utcnow
from tests.timing import scaled
from worker.runner import claim

ROOT = Path(__file__).resolve().parents[2]

# Dropout and shuffling: a resumed run only matches if every RNG state comes back.
SPEC: dict[str, Any] = {
    "dataset": {"name": "iris", "seed": 0},
    "model": {"arch": "mlp", "hidden": [16], "dropout": 0.2},
    "optimizer": {"name": "adam", "lr": 0.01},
    "schedule": {"name": "inverse_time", "decay": 0.05},
    "training": {"epochs": 6, "batch_size": 16, "seed": 3, "device": "cpu"},
    # A checkpoint every epoch (tiny epochs would otherwise write one a second).
    "checkpoints": {"keep_top_k": 1, "min_interval_seconds": 0},
}


def job_row(job_id: str) -> Job:
    with session_scope() as session:
        return session.get_one(Job, job_id)


def stored_metrics(job_id: str) -> dict[int, dict[str, float]]:
    with session_scope() as session:
        rows = session.execute(
            select(Metric.epoch, Metric.name, Metric.value).where(Metric.job_id == job_id)
        ).all()
    out: dict[int, dict[str, float]] = {}
    for epoch, name, value in rows:
        out.setdefault(epoch, {})[name] = value
    return out


def reference_metrics(spec: dict[str, Any]) -> dict[int, dict[str, float]]:
    """An uninterrupted run of the same spec, in process, with the core alone."""
    result = Trainer(JobSpec.model_validate(spec)).setup().train()
    return {record.epoch: dict(record.metrics) for record in result.history}


def assert_same_run(job_id: str, spec: dict[str, Any], tolerance: float = 1e-6) -> float:
    """The job's per-epoch metrics equal an uninterrupted run's; returns the largest gap."""
    got, want = stored_metrics(job_id), reference_metrics(spec)
    assert want and sorted(got) == sorted(want)
    worst = 0.0
    for epoch, metrics in want.items():
        for name, value in metrics.items():
            if name == "epoch_seconds":
                continue
            gap = abs(got[epoch][name] - value)
            worst = max(worst, gap)
            assert gap <= tolerance, (epoch, name, got[epoch][name], value)
    return worst


def take_lease(job_id: str, worker: str) -> Job:
    """``worker`` claims the job (as a delivery does before it trains): the claimed row."""
    job = claim(job_id, worker)
    assert job is not None, f"{worker} could not claim job {job_id}"
    assert job.status == JobStatus.RUNNING and job.worker == worker
    return job


def expire_lease(job_id: str) -> None:
    """The holder's last heartbeat an hour ago: its lease has timed out (without waiting)."""
    with session_scope() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(hours=1))
        )


def files_match_rows(job_id: str) -> bool:
    """The job's folder holds exactly the files its checkpoint rows name."""
    artifacts = get_artifacts()
    with session_scope() as session:
        rows = list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)))
    named = {artifacts.path(p).name for r in rows for p in (r.weights_path, r.state_path)}
    return {p.name for p in artifacts.job_dir(job_id).iterdir()} == named


def dies_writing(name: str) -> str:
    """A worker's script (``sys.argv[1]``: the job) that dies as SIGKILL kills in the
    middle of writing the file ``name`` (say ``epoch-00003-1.state.pt``): at the fsync of
    its temp file, before that is renamed into place."""
    return f"""
import os, signal, sys
real_fsync = os.fsync

def fsync(fd):
    if ".{name}." in os.readlink(f"/proc/self/fd/{{fd}}"):
        os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(fd)

os.fsync = fsync
from worker.runner import run_job
run_job(sys.argv[1], worker="victim/1")
"""


def write_every_due(waiting: list[Any], new: Any) -> list[Any]:
    """In place of worker/writer.py ``coalesce``: each checkpoint that falls due is written,
    none superseded while it waits for the one before (as when the writer keeps up), so a
    test on a busy machine still sees the write it is about."""
    return [*waiting, new]


WRITE_EVERY_DUE = """
from tests.worker.builders import write_every_due
from worker import writer
writer.coalesce = write_every_due
"""


def run_victim(script: str, job_id: str) -> int:
    """Run a worker's script on the job in a process of its own, every due checkpoint
    written; its exit status (-9 for a SIGKILL)."""
    return subprocess.run(
        [sys.executable, "-c", WRITE_EVERY_DUE + script, job_id],
        cwd=ROOT,
        env=dict(os.environ),
        timeout=scaled(120),
    ).returncode

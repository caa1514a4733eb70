"""A job on two processes through the worker's runner, against PostgreSQL (gloo on the CPU)."""

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from core.checkpoint import load_model
from descent.settings import Settings
from store import counters
from store.artifacts import get_artifacts
from store.db import session_scope
from store.models import Checkpoint, Job, Metric
from store.users import used_device_hours
from tests.timing import wait_for
from tests.worker.test_runner import make_job
from worker.runner import RetryableFailure, run_job

SPEC: dict[str, Any] = {
    "dataset": {"name": "iris", "seed": 0},
    "model": {"arch": "mlp", "hidden": [8]},
    "optimizer": {"name": "adam", "lr": 0.01},
    "training": {"epochs": 4, "batch_size": 16, "seed": 0, "device": "cpu"},
}


def _with(processes: int, **training: Any) -> dict[str, Any]:
    return {**SPEC, "training": {**SPEC["training"], "processes": processes, **training}}


def _series(job_id: str, name: str = "val_loss") -> dict[int, float]:
    with session_scope() as session:
        rows = session.execute(
            select(Metric.epoch, Metric.value).where(Metric.job_id == job_id, Metric.name == name)
        ).all()
    return dict(rows)


def _job(job_id: str) -> Job:
    with session_scope() as session:
        return session.get_one(Job, job_id)


def _ranks() -> list[int]:
    """The pids of this process's children that run ranks (spawned by the launcher)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def _epochs_counted() -> float:
    with session_scope() as session:
        return counters.totals(session, (counters.EPOCH_COUNT,))[counters.EPOCH_COUNT]


def test_a_two_process_job_records_what_one_process_would(postgres_env: Settings) -> None:
    counted = _epochs_counted()
    one, two = make_job(_with(1)), make_job(_with(2))
    assert run_job(one, worker="w1") == "succeeded"
    assert run_job(two, worker="w1") == "succeeded"
    expected, got = _series(one), _series(two)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4]
    for epoch, value in expected.items():
        assert got[epoch] == pytest.approx(value, abs=1e-5)
    job = _job(two)
    assert job.status == "succeeded" and job.epoch == 4 and job.attempt == 1
    assert job.parameters == _job(one).parameters
    # Rank 0 wrote the checkpoints, with the model's own parameter names (no "module.").
    with session_scope() as session:
        best = session.get_one(Checkpoint, job.best_checkpoint_id)
    path = get_artifacts().path(best.weights_path)
    model = load_model(None, path)
    assert not any(name.startswith("module.") for name in model.state_dict())
    # Rank 0 alone counts the epochs: 4 for each job, not 4 per rank...
    assert _epochs_counted() - counted == 8
    # ...and the two-process job holds two devices for its runtime.
    with session_scope() as session:
        used = used_device_hours(session, "local") * 3600
    assert used == pytest.approx(_job(one).runtime_seconds + 2 * job.runtime_seconds)


def test_a_cancel_stops_both_ranks(postgres_env: Settings) -> None:
    job_id = make_job(_with(2, epochs=2000))

    def cancel_after_an_epoch() -> None:
        wait_for("the first epoch", lambda: _job(job_id).epoch >= 1, 120)
        with session_scope() as session:
            session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))

    thread = threading.Thread(target=cancel_after_an_epoch, daemon=True)
    thread.start()
    assert run_job(job_id, worker="w1") == "cancelled"
    thread.join()
    job = _job(job_id)
    assert job.status == "cancelled" and job.stop["reason"] == "cancelled"
    assert 1 <= job.epoch < 2000
    assert _ranks() == []  # both ranks ended


def test_a_killed_rank_is_a_lost_worker_and_the_retry_ends_bit_identical(
    postgres_env: Settings,
) -> None:
    epochs = 24  # killed at epoch 3: the kill lands mid-run with room to spare
    plain = make_job(_with(2, epochs=epochs))
    assert run_job(plain, worker="w1") == "succeeded"
    job_id = make_job(_with(2, epochs=epochs))
    killed: list[int] = []

    def kill_a_rank() -> None:
        wait_for("epoch 3", lambda: _job(job_id).epoch >= 3, 120)
        pids = wait_for("two ranks", lambda: len(_ranks()) == 2 and _ranks(), 30)
        os.kill(pids[-1], signal.SIGKILL)
        killed.append(pids[-1])

    thread = threading.Thread(target=kill_a_rank, daemon=True)
    thread.start()
    with pytest.raises(RetryableFailure) as info:
        run_job(job_id, worker="w1")
    thread.join()
    assert killed and info.value.failure == "worker_lost"
    assert "of the job died (exit code -9)" in info.value.message
    assert run_job(job_id, worker="w1") == "succeeded"
    job = _job(job_id)
    assert job.attempt == 2 and job.epoch == epochs
    assert _series(job_id) == _series(plain)  # resumed from its last checkpoint, same floats

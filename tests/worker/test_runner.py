"""The worker's job runner against a real database, without Celery in between."""

import dataclasses
import math
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

from api.jobs.schemas import JobPublic
from core.results import EpochRecord
from core.spec import JobSpec
from core.train import Trainer
from descent.settings import Settings
from store.artifacts import get_artifacts
from store.db import session_scope
from store.models import Checkpoint, Job, JobStatus, Metric
from worker.runner import JobNotFound, WorkerHooks, run_job


def make_job(spec: dict[str, Any], **fields: Any) -> str:
    parsed = JobSpec.model_validate(spec)
    es = parsed.early_stopping
    with session_scope() as session:
        job = Job(
            spec=parsed.model_dump(mode="json"),
            spec_hash=parsed.spec_hash(),
            queue="cpu",
            monitor=es.monitor if es else "val_loss",
            mode=(es.mode or "min") if es else "min",
            **fields,
        )
        session.add(job)
        session.flush()
        return job.id


SPEC = {
    "dataset": {"name": "iris", "seed": 0},
    "model": {"arch": "mlp", "hidden": [8]},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "training": {"epochs": 6, "batch_size": 16, "seed": 0},
    "checkpoints": {"keep_top_k": 1, "min_interval_seconds": 0},
}
# Three epochs, a checkpoint of each kept: redo_from can resume after any of them.
SHORT_SPEC = {
    **SPEC,
    "training": {**SPEC["training"], "epochs": 3},
    "checkpoints": {"keep_top_k": 3, "min_interval_seconds": 0},
}


def redo_from(job_id: str, epoch: int) -> None:
    """Make a finished job one that a crash interrupted after ``epoch``: its later checkpoints
    gone, queued again, so that the next run resumes after ``epoch`` and redoes the rest (its
    metrics are still stored: the redone epochs replace them)."""
    with session_scope() as session:
        session.execute(
            delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.epoch > epoch)
        )
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status=JobStatus.QUEUED, finished_at=None, stop=None, best_checkpoint_id=None)
        )


def test_run_job_records_every_epoch_and_keeps_best_and_last(db_env: Settings) -> None:
    job_id = make_job(SPEC)
    assert run_job(job_id, worker="w1") == "succeeded"
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        values = dict(
            session.execute(
                select(Metric.epoch, Metric.value).where(
                    Metric.job_id == job_id, Metric.name == "val_loss"
                )
            ).all()
        )
        rows = list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)))
        assert session.scalar(select(func.count()).select_from(Metric)) >= 6 * 5
    assert sorted(values) == [1, 2, 3, 4, 5, 6]
    best = min(values, key=values.__getitem__)
    assert job.status == "succeeded" and job.epoch == 6 and job.attempt == 1
    assert job.best_epoch == best and math.isclose(job.best_value, values[best])
    assert job.stop["reason"] == "max_epochs"
    # keep_top_k=1: exactly the best and the last survive, rows and files alike.
    assert {row.epoch for row in rows} == {best, 6}
    assert job.best_checkpoint_id in {row.id for row in rows if row.epoch == best}
    artifacts = get_artifacts()
    files = {p.name for p in artifacts.job_dir(job_id).iterdir()}
    named = {artifacts.path(r.weights_path).name for r in rows} | {
        artifacts.path(r.state_path).name for r in rows
    }
    assert files == named


def test_a_finished_job_is_never_run_again(sqlite_env: Settings) -> None:
    job_id = make_job(SPEC)
    assert run_job(job_id, worker="w1") == "succeeded"
    assert run_job(job_id, worker="w2") == "skipped"
    with session_scope() as session:
        assert session.get_one(Job, job_id).attempt == 1


def test_a_cancelled_queued_job_is_skipped(sqlite_env: Settings) -> None:
    job_id = make_job(SPEC, cancel_requested=True)
    assert run_job(job_id, worker="w1") == "skipped"
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        assert job.status == "cancelled" and job.started_at is None


def test_a_missing_job_fails_loudly(sqlite_env: Settings) -> None:
    with pytest.raises(JobNotFound):
        run_job("0" * 32, worker="w1")


def test_a_diverging_job_fails_with_its_reason_and_keeps_its_history(sqlite_env: Settings) -> None:
    spec = {
        **SPEC,
        "optimizer": {"name": "sgd", "lr": 100.0, "momentum": 0.9},
        "training": {"epochs": 20, "batch_size": 16, "seed": 0},
    }
    job_id = make_job(spec)
    assert run_job(job_id, worker="w1") == "failed"
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        epochs = session.scalars(select(Metric.epoch).where(Metric.job_id == job_id)).all()
    assert job.status == "failed"
    assert "lower the learning rate" in job.error and job.finished_at is not None
    assert set(epochs) == set(range(1, job.epoch + 1))


def test_the_job_record_carries_the_diagnosis_and_warnings(sqlite_env: Settings) -> None:
    # Batch norm on batches of 8 is allowed, with a warning; one epoch at a tiny learning
    # rate has not learned yet: underfitting.
    spec = {
        **SPEC,
        "model": {"arch": "mlp", "hidden": [8], "norm": "batch"},
        "optimizer": {"name": "sgd", "lr": 1e-5, "momentum": 0.0},
        "training": {"epochs": 1, "batch_size": 8, "seed": 0},
    }
    job_id = make_job(spec)
    assert run_job(job_id, worker="w1") == "succeeded"
    with session_scope() as session:
        job = session.get_one(Job, job_id)
    assert job.diagnosis["final"] is True
    assert job.diagnosis["verdict"] == "underfitting", job.diagnosis
    assert any("batch norm" in warning for warning in job.warnings)


def test_an_early_stop_records_the_best_epoch_value_and_patience_in_the_stop(
    sqlite_env: Settings,
) -> None:
    # No epoch after the first improves on it by min_delta: patience 2 stops after epoch 3,
    # while the best epoch is the run's lowest val_loss (the patience counter counts apart).
    spec = {**SPEC, "early_stopping": {"patience": 2, "min_delta": 1000.0}}
    job_id = make_job(spec)
    assert run_job(job_id, worker="w1") == "succeeded"
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        values = dict(
            session.execute(
                select(Metric.epoch, Metric.value).where(
                    Metric.job_id == job_id, Metric.name == "val_loss"
                )
            ).all()
        )
    best = min(values, key=values.__getitem__)
    assert sorted(values) == [1, 2, 3] and job.epoch == 3
    assert job.stop["reason"] == "early_stopping" and job.stop["rule"] == "patience"
    assert job.stop["epoch"] == 3
    assert job.stop["best_epoch"] == best == job.best_epoch
    assert job.stop["best_value"] == pytest.approx(values[best])
    assert job.stop["patience_wait"] == 2 == job.patience_wait


ON_EPOCH_END = WorkerHooks.on_epoch_end


def report_peaks(monkeypatch: pytest.MonkeyPatch, peaks: dict[int, float]) -> None:
    """Epochs report these ``peak_memory_bytes``, as epochs on CUDA do (no GPU here)."""

    def on_epoch_end(self: WorkerHooks, trainer: Trainer, record: EpochRecord) -> None:
        metrics = {**record.metrics, "peak_memory_bytes": peaks[record.epoch]}
        ON_EPOCH_END(self, trainer, dataclasses.replace(record, metrics=metrics))

    monkeypatch.setattr(WorkerHooks, "on_epoch_end", on_epoch_end)


def peak_of(job_id: str) -> int | None:
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        public = JobPublic.from_row(job).peak_memory_bytes
        assert public == job.peak_memory_bytes  # what GET /v1/jobs/{id} shows
        return job.peak_memory_bytes


def test_the_job_keeps_its_peak_device_memory_over_all_attempts(
    db_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu_job = make_job(SHORT_SPEC)
    assert run_job(cpu_job, worker="w1") == "succeeded"
    assert peak_of(cpu_job) is None  # no device memory measured on the CPU

    job_id = make_job(SHORT_SPEC)
    report_peaks(monkeypatch, {1: 100.0, 2: 3e9, 3: 200.0})
    assert run_job(job_id, worker="w1") == "succeeded"
    assert peak_of(job_id) == 3_000_000_000  # the largest epoch's, past 2**31 (BigInteger)
    # A resumed attempt that redoes epoch 3 with less memory keeps the earlier peak...
    redo_from(job_id, 2)
    report_peaks(monkeypatch, {3: 250.0})
    assert run_job(job_id, worker="w2") == "succeeded"
    assert peak_of(job_id) == 3_000_000_000
    # ...and one with more raises it.
    redo_from(job_id, 2)
    report_peaks(monkeypatch, {3: 5e9})
    assert run_job(job_id, worker="w3") == "succeeded"
    assert peak_of(job_id) == 5_000_000_000

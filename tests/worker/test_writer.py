"""Checkpoints written off the training thread: training never waits for a write (those
superseded while they wait are skipped, the best and the last never), a failed write fails
the run (retried from the last durable checkpoint), and a kill in the middle of writing a
best checkpoint loses neither the best checkpoint nor the run's outcome."""

import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from sqlalchemy import select

from core.checkpoint import load_model, read_metadata
from descent.settings import Settings
from store.artifacts import LocalArtifacts, get_artifacts, sha256_matches
from store.db import session_scope
from store.models import Checkpoint, Job
from tests.timing import scaled, wait_for
from tests.worker.builders import (
    SPEC,
    assert_same_run,
    dies_writing,
    expire_lease,
    files_match_rows,
    job_row,
    run_victim,
)
from tests.worker.test_cadence import SPEC as CADENCE_SPEC
from tests.worker.test_cadence import best_epochs
from tests.worker.test_runner import make_job
from worker import runner, writer
from worker.runner import RetryableFailure, run_job
from worker.writer import coalesce


class SlowStore(LocalArtifacts):
    """The local folder, where storing epoch ``hold``'s weights waits for ``release``
    (an upload to a slow object store)."""

    def __init__(self, root: Path, hold: int) -> None:
        super().__init__(root)
        self.hold, self.release, self.held = hold, threading.Event(), threading.Event()

    def write(self, relative: str, data: bytes, sha256: str | None = None) -> str:
        name = Path(relative).name
        if name.startswith(f"epoch-{self.hold:05d}-") and name.endswith(".safetensors"):
            self.held.set()
            assert self.release.wait(scaled(60))
            assert sha256 == hashlib.sha256(data).hexdigest()
        return super().write(relative, data, sha256)


def test_training_never_waits_for_a_slow_store_and_skips_superseded_checkpoints(
    db_env: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="worker.writer")
    # Bests at epochs 1-5, none after; a checkpoint every 4th epoch; 12 epochs.
    assert best_epochs(CADENCE_SPEC) == {1, 2, 3, 4, 5}
    store = SlowStore(get_artifacts().root, hold=4)
    monkeypatch.setattr(runner, "get_artifacts", lambda: store)
    stored: list[int] = []
    waiting: list[int] = []  # checkpoints waiting after each hand-off
    real_store = runner.WorkerHooks._store_checkpoint

    def counted_store(self: runner.WorkerHooks, snap: writer.Snapshot) -> None:
        real_store(self, snap)
        stored.append(snap.epoch)

    def counted_coalesce(*args: Any) -> Any:
        kept = coalesce(*args)  # the real one (tests/conftest.py writes every due one)
        waiting.append(len(kept))
        return kept

    monkeypatch.setattr(runner.WorkerHooks, "_store_checkpoint", counted_store)
    monkeypatch.setattr(writer, "coalesce", counted_coalesce)
    job_id = make_job(CADENCE_SPEC)
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(run_job(job_id, worker="w/1")))
    thread.start()
    try:
        wait_for("epoch 4's checkpoint to be stored", store.held.is_set, 60)
        # Every epoch trains and commits its metrics while epoch 4's upload hangs.
        wait_for("epoch 12's metrics", lambda: job_row(job_id).epoch == 12, 60)
        with session_scope() as session:
            rows = set(session.scalars(select(Checkpoint.epoch).where(Checkpoint.job_id == job_id)))
        assert rows == set()  # epoch 4 is not durable yet: no row names its files
        assert job_row(job_id).status == "running"  # the run waits for its checkpoints
    finally:
        store.release.set()
        thread.join(scaled(60))
    assert outcome == ["succeeded"]
    # Due at epochs 4, 8 and 12, the best 5 with 8: while 4 was stored, 8 was superseded
    # by the last epoch, not the best 5 (so the best and the last are written). The last
    # epoch's is written by the run's end, in the transaction that ends the job.
    assert stored == [4, 5]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped == [
        f"checkpoints-{job_id}: epoch 8's checkpoint skipped, superseded by epoch 12's before "
        "its write began"
    ]
    assert max(waiting) == 2  # a best and a later checkpoint at most: memory stays bounded
    with session_scope() as session:
        rows = set(session.scalars(select(Checkpoint.epoch).where(Checkpoint.job_id == job_id)))
    assert rows == {4, 5, 12}
    assert job_row(job_id).epoch == 12 and files_match_rows(job_id)
    assert best_checkpoint(job_id).epoch == 5
    assert_same_run(job_id, CADENCE_SPEC)


def test_a_run_ends_in_one_transaction_with_its_last_checkpoint_and_the_jobs_end(
    db_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the last epoch, one commit (on the training thread) holds the epochs not yet
    committed, the last checkpoint's row and the job's end: a study's short trial no longer
    ends in three transactions on three threads."""
    from sqlalchemy import event

    from store.db import get_engine

    monkeypatch.setattr(runner, "COMMIT_EVERY", 60.0)  # the recorder commits only when asked
    commits: list[str] = []

    def committed(_connection: Any) -> None:
        name = threading.current_thread().name
        if not name.startswith("lease-"):  # the lease's cancel polls, on their own clock
            commits.append(name)

    event.listen(get_engine(), "commit", committed)
    real_end = runner.WorkerHooks.on_epoch_end
    marks: list[int] = []  # commits so far at each epoch's end

    def on_epoch_end(self: runner.WorkerHooks, trainer: Any, record: Any) -> None:
        real_end(self, trainer, record)
        marks.append(len(commits))

    monkeypatch.setattr(runner.WorkerHooks, "on_epoch_end", on_epoch_end)
    spec = {**SPEC, "checkpoints": {"keep_top_k": 1}}  # the default cadence
    job_id = make_job(spec)
    try:
        assert run_job(job_id, worker="w/1") == "succeeded"
    finally:
        event.remove(get_engine(), "commit", committed)
    assert len(marks) == spec["training"]["epochs"]
    assert commits[marks[-1] :] == [threading.current_thread().name]
    job = job_row(job_id)
    assert job.status == "succeeded" and job.epoch == spec["training"]["epochs"]
    with session_scope() as session:
        kept = session.scalars(select(Checkpoint.epoch).where(Checkpoint.job_id == job_id))
        assert spec["training"]["epochs"] in set(kept)
    assert best_checkpoint(job_id).epoch == job.best_epoch and files_match_rows(job_id)
    assert_same_run(job_id, spec)


def test_a_failed_upload_is_retried_from_the_last_durable_checkpoint(
    sqlite_env: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_write = LocalArtifacts.write

    def store_down(
        self: LocalArtifacts, relative: str, data: bytes, sha256: str | None = None
    ) -> str:
        if Path(relative).name.startswith("epoch-00003-"):
            raise ConnectionError("the object store is unreachable")
        return real_write(self, relative, data, sha256)

    monkeypatch.setattr(LocalArtifacts, "write", store_down)
    job_id = make_job(SPEC)
    with pytest.raises(RetryableFailure) as raised:
        run_job(job_id, worker="w/1")
    assert raised.value.failure == "connection" and "unreachable" in raised.value.message
    job = job_row(job_id)
    # Epoch 3's metrics were visible before its checkpoint failed; the lease is given back.
    assert job.status == "queued" and job.epoch >= 3 and job.worker is None
    monkeypatch.setattr(LocalArtifacts, "write", real_write)
    with caplog.at_level("INFO", logger="worker.runner"):
        assert run_job(job_id, worker="w/2") == "succeeded"
    assert "resumes after epoch 2" in caplog.text
    assert files_match_rows(job_id)  # epoch 3's unstored files are swept
    assert_same_run(job_id, SPEC)


# ------------------------------------------------------------------ a kill during a best's write


def best_checkpoint(job_id: str) -> Checkpoint:
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        return session.get_one(Checkpoint, job.best_checkpoint_id)


def test_a_kill_while_a_best_checkpoint_is_written_keeps_the_best(fast_lease: Settings) -> None:
    spec = {**SPEC, "checkpoints": {"keep_top_k": 1, "min_interval_seconds": 0}}
    job_id, reference = make_job(spec), make_job(spec)
    # Killed in the middle of writing epoch 4's weights (a new best), on the writer thread.
    assert run_victim(dies_writing("epoch-00004-1.safetensors"), job_id) == -9
    job = job_row(job_id)
    assert job.status == "running" and job.epoch >= 3 and job.best_epoch >= 3
    # The best checkpoint is still the last durable one (epoch 3), whole: it loads and its
    # bytes match its sha256; the half-written file has no row.
    artifacts = get_artifacts()
    best = best_checkpoint(job_id)
    assert best.epoch == 3
    weights = artifacts.path(best.weights_path)
    assert sha256_matches(weights, best.sha256)
    load_model(None, weights)
    leftovers = [p.name for p in artifacts.job_dir(job_id).iterdir()]
    assert any(n.startswith(".epoch-00004-1.safetensors.") for n in leftovers), leftovers

    expire_lease(job_id)  # the victim's lease runs out
    assert run_job(job_id, worker="rescuer/2") == "succeeded"
    assert run_job(reference, worker="w/3") == "succeeded"
    # The resumed job's best checkpoint holds an uninterrupted run's weights, bit for bit
    # (not its bytes: safetensors writes the metadata in no fixed order).
    mine, theirs = (artifacts.path(best_checkpoint(j).weights_path) for j in (job_id, reference))
    assert read_metadata(mine) == read_metadata(theirs)
    got, expected = (safetensors.torch.load_file(str(path)) for path in (mine, theirs))
    assert expected and got.keys() == expected.keys()
    assert all(torch.equal(got[name], expected[name]) for name in expected)
    assert best_checkpoint(job_id).epoch == job_row(reference).best_epoch
    assert files_match_rows(job_id)
    assert_same_run(job_id, spec)


def test_no_heartbeat_follows_the_jobs_end(
    sqlite_env: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The lease stops before the run's last transaction ends the job: a heartbeat after it
    would find the job released and call the lease lost."""
    monkeypatch.setattr(runner, "CANCEL_POLL_EVERY", 0.0005)  # a heartbeat at every poll
    settings = sqlite_env.model_copy(update={"heartbeat_seconds": 0.0})
    real_committed = runner.WorkerHooks._epochs_committed

    def slow_after_commit(self: runner.WorkerHooks, *args: Any) -> None:
        real_committed(self, *args)
        if threading.current_thread() is threading.main_thread():  # the run's last commit
            time.sleep(0.05)  # what follows it: file deletions, a slow store

    monkeypatch.setattr(runner.WorkerHooks, "_epochs_committed", slow_after_commit)
    with caplog.at_level(logging.WARNING, logger="worker.runner"):
        for _ in range(3):
            assert run_job(make_job(SPEC), worker="w/1", settings=settings) == "succeeded"
    assert "lease lost" not in caplog.text

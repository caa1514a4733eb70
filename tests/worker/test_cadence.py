"""The checkpoint cadence (checkpoints.every_epochs, min_interval_seconds): which epochs get a
checkpoint, that every epoch's metrics are still visible, and that a crash between two
checkpoints redoes only the epochs since the last one, replacing their metrics."""

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from core.results import EpochRecord
from core.spec import CheckpointSpec, JobSpec
from core.train import Trainer
from descent.settings import Settings
from store.db import session_scope
from store.models import Checkpoint, Metric
from tests.worker import builders
from tests.worker.builders import (
    assert_same_run,
    expire_lease,
    files_match_rows,
    job_row,
    run_victim,
)
from tests.worker.test_runner import make_job
from worker.runner import run_job
from worker.writer import Cadence

# The reliability tests' job, longer and faster, monitored on val_accuracy, which stops
# improving after epoch 5: the bests are epochs 1-5.
SPEC: dict[str, Any] = {
    **builders.SPEC,
    "optimizer": {"name": "adam", "lr": 0.05},
    "training": {**builders.SPEC["training"], "epochs": 12},
    "early_stopping": {"monitor": "val_accuracy", "patience": 100},
    "checkpoints": {"keep_top_k": 50, "every_epochs": 4, "min_interval_seconds": 0},
}


def with_checkpoints(**fields: Any) -> dict[str, Any]:
    return {**SPEC, "checkpoints": {**SPEC["checkpoints"], **fields}}


def best_epochs(spec: dict[str, Any]) -> set[int]:
    result = Trainer(JobSpec.model_validate(spec)).setup().train()
    return {record.epoch for record in result.history if record.is_best}


def checkpoint_epochs(job_id: str) -> set[int]:
    with session_scope() as session:
        return set(session.scalars(select(Checkpoint.epoch).where(Checkpoint.job_id == job_id)))


def metric_rows(job_id: str) -> dict[int, int]:
    """Rows per epoch of the job's metrics."""
    with session_scope() as session:
        rows = session.execute(
            select(Metric.epoch, func.count()).where(Metric.job_id == job_id).group_by(Metric.epoch)
        ).all()
    return {epoch: count for epoch, count in rows}


def test_every_epochs_writes_every_nth_epoch_each_best_and_the_last(db_env: Settings) -> None:
    bests = best_epochs(SPEC)
    assert bests == {1, 2, 3, 4, 5}  # the premise: no best after epoch 5
    job_id = make_job(SPEC)
    assert run_job(job_id, worker="w/1") == "succeeded"
    # The 4th epochs and the last; best 5 held in memory until epoch 8 (bests 1-3 were
    # each replaced by the next before a due epoch; 4 is due and best).
    assert checkpoint_epochs(job_id) == {4, 5, 8, 12}
    job = job_row(job_id)
    with session_scope() as session:
        best = session.get_one(Checkpoint, job.best_checkpoint_id)
    assert job.best_epoch == 5 and best.epoch == 5
    # Metrics of every epoch are visible, once each.
    rows = metric_rows(job_id)
    assert sorted(rows) == list(range(1, 13)) and len(set(rows.values())) == 1
    assert files_match_rows(job_id)


def test_a_long_min_interval_leaves_only_the_bests_and_the_last(sqlite_env: Settings) -> None:
    spec = with_checkpoints(every_epochs=1, min_interval_seconds=3600)
    job_id = make_job(spec)
    assert run_job(job_id, worker="w/1") == "succeeded"
    assert checkpoint_epochs(job_id) == {5, 12}  # the best, held to the end, and the last


def test_a_run_stopped_early_ends_with_its_last_epochs_checkpoint(sqlite_env: Settings) -> None:
    spec = {**SPEC, "early_stopping": {"monitor": "val_accuracy", "patience": 2}}
    spec["checkpoints"] = {"keep_top_k": 50, "every_epochs": 100, "min_interval_seconds": 0}
    job_id = make_job(spec)
    assert run_job(job_id, worker="w/1") == "succeeded"
    job = job_row(job_id)
    assert job.stop["reason"] == "early_stopping" and job.epoch == 7  # best 5, patience 2
    assert checkpoint_epochs(job_id) == {5, 7}


def test_the_default_cadence_and_no_cadence_changes_the_hash() -> None:
    spec = CheckpointSpec()
    # Every epoch, at most one a second (or less often for slow writes, see below): a 10-ms
    # epoch job writes every ~100th epoch.
    assert (spec.every_epochs, spec.min_interval_seconds) == (1, None)
    # When checkpoints are written does not change the training: a spec without the
    # cadence's fields (written before they existed), or with any cadence, keeps its hash,
    # so its checkpoints resume.
    plain = JobSpec.model_validate({"dataset": {"name": "iris"}})
    dumped = plain.model_dump(mode="json")
    del dumped["checkpoints"]["every_epochs"], dumped["checkpoints"]["min_interval_seconds"]
    assert plain.spec_hash() == JobSpec.model_validate(dumped).spec_hash()
    dumped["checkpoints"].update(every_epochs=7, min_interval_seconds=30)
    assert plain.spec_hash() == JobSpec.model_validate(dumped).spec_hash()
    dumped["checkpoints"]["keep_top_k"] = 5  # what is kept is part of it
    assert plain.spec_hash() != JobSpec.model_validate(dumped).spec_hash()


def record(epoch: int, *, best: bool = False) -> EpochRecord:
    return EpochRecord(epoch, {}, "val_loss", 1.0, best, 1, 1.0, 0)


def test_the_interval_counts_from_the_last_checkpoint() -> None:
    now = [0.0]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    cadence = Cadence(CheckpointSpec(every_epochs=2, min_interval_seconds=10), 100, clock)
    now[0] = 9.0
    assert not cadence.due(record(2))  # its epoch, but too soon
    assert not cadence.due(record(3, best=True))  # a best waits for a due epoch
    now[0] = 10.0
    assert cadence.due(record(4))
    cadence.written()
    now[0] = 19.0
    assert not cadence.due(record(6))
    now[0] = 20.0
    assert cadence.due(record(6)) and not cadence.due(record(7))
    assert cadence.due(record(100))  # the last epoch


def test_the_default_interval_keeps_writing_under_two_percent_of_the_run() -> None:
    """Unset, the interval is a second, or 50 times the last write's time when that is
    longer: a checkpoint that takes 0.1 s to store is written at most every 5 s."""
    now = [0.0]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    cadence = Cadence(CheckpointSpec(), 100, clock)
    now[0] = 0.99
    assert not cadence.due(record(1))
    now[0] = 1.0
    assert cadence.due(record(1))
    cadence.written()
    cadence.wrote(0.1)  # the writer took 0.1 s
    now[0] = 5.99
    assert not cadence.due(record(2)) and not cadence.due(record(3, best=True))
    now[0] = 6.0
    assert cadence.due(record(4))
    cadence.written()
    cadence.wrote(0.005)  # fast again: back to a second
    now[0] = 7.0
    assert cadence.due(record(5))
    # An explicit interval is exact, whatever the writes cost.
    fixed = Cadence(CheckpointSpec(min_interval_seconds=0), 100, clock)
    fixed.wrote(10.0)
    assert fixed.due(record(6))


def test_the_write_expected_is_the_nearest_sizes_never_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker import writer

    monkeypatch.setattr(writer, "_writes", {})  # restored after: no other test's
    assert writer.expected_write_seconds(1000) == 0.0  # no write yet
    writer.remember_write(0.4, 2_000_000)
    assert writer.expected_write_seconds(4_000_000) == 0.4  # larger: as long
    assert writer.expected_write_seconds(500_000) == pytest.approx(0.1)  # smaller: less
    # A small model's job in between: a large model's next job still expects its own.
    writer.remember_write(0.005, 5_000)
    assert writer.expected_write_seconds(1_800_000) == pytest.approx(0.36)
    assert writer.expected_write_seconds(5_000) == 0.005
    assert writer.expected_write_seconds(2_500) == pytest.approx(0.0025)
    assert writer.expected_write_seconds(3_000_000) == 0.4  # larger than any: the largest's
    writer.remember_write(0.6, 2_000_000)  # the last write of a size is the one kept
    assert writer.expected_write_seconds(2_000_000) == 0.6
    for size in range(1, writer.REMEMBERED_SIZES + 1):  # only the latest sizes are kept
        writer.remember_write(0.001, size)
    assert writer.expected_write_seconds(1_000_000) == 0.001


def test_a_run_whose_writes_are_expected_to_be_slow_does_not_write_at_its_first_second() -> None:
    """Before its first write, the interval follows the write expected (from the worker's
    last job): 0.1 s means a first checkpoint after 5 s, not 1 s."""
    now = [0.0]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    cadence = Cadence(CheckpointSpec(), 100, clock, write_seconds=0.1)
    now[0] = 4.99
    assert not cadence.due(record(1))
    now[0] = 5.0
    assert cadence.due(record(2))


def test_a_run_with_the_default_interval_learns_it_from_its_own_writes(
    sqlite_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker tells the cadence how long each checkpoint took to store (files and
    row): with a store that takes 0.05 s a write, the default interval becomes 2.5 s."""
    import time

    from store.artifacts import LocalArtifacts, get_artifacts
    from worker import runner

    class SlowStore(LocalArtifacts):
        def write(self, relative: str, data: bytes, sha256: str | None = None) -> str:
            time.sleep(0.025)  # each of a checkpoint's two files
            return super().write(relative, data, sha256)

    from worker import writer

    monkeypatch.setattr(writer, "_writes", {})  # restored after: no other test's
    store = SlowStore(get_artifacts().root)
    monkeypatch.setattr(runner, "get_artifacts", lambda: store)
    cadences: list[Cadence] = []
    real_wrote = Cadence.wrote

    def wrote(self: Cadence, seconds: float) -> None:
        real_wrote(self, seconds)
        cadences.append(self)

    monkeypatch.setattr(Cadence, "wrote", wrote)
    spec = {**SPEC, "checkpoints": {"keep_top_k": 3}}  # the default cadence
    job_id = make_job(spec)
    assert run_job(job_id, worker="w/1") == "succeeded"
    assert cadences, "no write was reported to the cadence"
    cadence = cadences[-1]
    assert cadence.fixed is None and cadence.write_seconds >= 0.05
    assert cadence.interval == pytest.approx(cadence.write_seconds * 50) and cadence.interval >= 2.5

    # The worker's next job of the same model starts from that write's time: its first
    # checkpoint is not due a second in.
    started: list[float] = []  # each new cadence's interval, as it starts
    real_init = Cadence.__init__

    def init(self: Cadence, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        started.append(self.interval)

    monkeypatch.setattr(Cadence, "__init__", init)
    assert run_job(make_job(spec), worker="w/1") == "succeeded"
    assert started == [pytest.approx(cadence.interval, rel=1e-6)]


# ------------------------------------------------------------------ a crash between checkpoints

VICTIM = """
import os, signal, sys
from worker import runner

real = runner.WorkerHooks.on_epoch_end

def on_epoch_end(self, trainer, record):
    real(self, trainer, record)
    if record.epoch == 11:  # its metrics are committed; its checkpoint is not due
        self.finish()
        os.kill(os.getpid(), signal.SIGKILL)

runner.WorkerHooks.on_epoch_end = on_epoch_end
runner.run_job(sys.argv[1], worker="victim/1")
"""


def test_a_crash_redoes_only_the_epochs_since_the_last_checkpoint(
    fast_lease: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = make_job(SPEC)
    assert run_victim(VICTIM, job_id) == -9
    assert job_row(job_id).epoch == 11 and sorted(metric_rows(job_id)) == list(range(1, 12))
    assert checkpoint_epochs(job_id) == {4, 5, 8}
    expire_lease(job_id)  # the victim's heartbeat stopped
    with caplog.at_level("INFO", logger="worker.runner"):
        assert run_job(job_id, worker="rescuer/2") == "succeeded"
    assert "resumes after epoch 8" in caplog.text  # epochs 9-12 redone, no more
    # The redone epochs' metrics replaced the first attempt's: one set per epoch, equal to
    # an uninterrupted run's.
    rows = metric_rows(job_id)
    assert sorted(rows) == list(range(1, 13)) and len(set(rows.values())) == 1
    assert_same_run(job_id, SPEC)
    assert checkpoint_epochs(job_id) == {4, 5, 8, 12}
    assert job_row(job_id).attempt == 2 and files_match_rows(job_id)

"""Nothing lost, exactly one execution: the lease, redelivery, the sweeper, failure classes,
and a worker killed in the middle of a checkpoint write (a real SIGKILL)."""

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core.spec import JobSpec
from core.train import Trainer
from descent.settings import Settings
from store.artifacts import get_artifacts
from store.db import get_sessionmaker, make_engine, session_scope
from store.models import Checkpoint, Job, JobStatus, utcnow
from store.users import create_user, set_limits
from tests.conftest import migrated
from tests.timing import scaled, wait_for
from tests.worker.builders import (
    SPEC,
    assert_same_run,
    dies_writing,
    expire_lease,
    files_match_rows,
    job_row,
    run_victim,
    stored_metrics,
    take_lease,
)
from tests.worker.test_runner import make_job
from worker import runner
from worker.runner import RetryableFailure, run_job
from worker.sweeper import sweep

# ------------------------------------------------------------------ one execution


def test_a_second_delivery_while_the_lease_is_live_does_nothing(db_env: Settings) -> None:
    job_id = make_job(SPEC)
    assert take_lease(job_id, "node-a/1").attempt == 1  # the first delivery runs it...
    assert run_job(job_id, worker="node-b/2") == "skipped"  # ...the second does nothing
    job = job_row(job_id)
    assert job.status == "running" and job.attempt == 1 and job.worker == "node-a/1"
    assert stored_metrics(job_id) == {}


def test_concurrent_deliveries_run_the_job_once(db_env: Settings) -> None:
    job_id = make_job(SPEC)
    outcomes: list[str] = []

    def deliver(worker: str) -> None:
        outcomes.append(run_job(job_id, worker=worker))

    threads = [threading.Thread(target=deliver, args=(f"w{i}/{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["skipped", "skipped", "succeeded"]
    job = job_row(job_id)
    assert job.attempt == 1 and job.status == "succeeded"
    assert sorted(stored_metrics(job_id)) == [1, 2, 3, 4, 5, 6]
    assert run_job(job_id, worker="w9/9") == "skipped"  # finished: never run again


def test_a_lease_of_a_dead_process_on_this_node_is_taken_at_once(sqlite_env: Settings) -> None:
    job_id = make_job(SPEC)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert take_lease(job_id, f"node/{dead.pid}").attempt == 1  # its heartbeat is fresh
    assert run_job(job_id, worker=f"node/{os.getpid()}") == "succeeded"
    assert job_row(job_id).attempt == 2


def test_a_job_whose_lease_is_taken_over_stops_and_writes_nothing_more(
    fast_lease: Settings,
) -> None:
    spec = {**SPEC, "training": {**SPEC["training"], "epochs": 400}}
    job_id = make_job(spec)
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(run_job(job_id, worker="old/1")))
    thread.start()
    wait_for("the job to pass epoch 2", lambda: job_row(job_id).epoch >= 2, 60, interval=0.02)
    with session_scope() as session:  # another worker took the job over (the old one stalled)
        session.execute(update(Job).where(Job.id == job_id).values(worker="new/2"))
        taken_at = session.get_one(Job, job_id).epoch
    thread.join(timeout=scaled(60))
    assert outcome == ["lost"]
    job = job_row(job_id)
    assert job.status == "running" and job.worker == "new/2"
    assert job.epoch <= taken_at + 1  # at most the epoch that was committing meanwhile
    assert max(stored_metrics(job_id)) == job.epoch


def test_a_job_that_keeps_losing_its_worker_fails_after_max_attempts(
    configure: Callable[..., Settings], tmp_path: Path
) -> None:
    migrated(configure(DESCENT_DATA_DIR=str(tmp_path / "d"), DESCENT_LEASE_TIMEOUT_SECONDS="0.2"))
    job_id = make_job(SPEC)
    for attempt in (1, 2, 3):  # each "worker" claims it, then dies without a word
        assert take_lease(job_id, f"doomed/{attempt}").attempt == attempt
        expire_lease(job_id)
    assert run_job(job_id, worker="w/4") == "skipped"
    job = job_row(job_id)
    assert job.status == "failed" and job.attempt == 3
    assert "started 3 times" in job.error and "max_attempts 3" in job.error
    assert job.stop["failure"] == "worker_lost"


def test_lost_workers_can_be_configured_not_to_be_retried(
    configure: Callable[..., Settings], tmp_path: Path
) -> None:
    migrated(
        configure(
            DESCENT_DATA_DIR=str(tmp_path / "d"),
            DESCENT_LEASE_TIMEOUT_SECONDS="0.2",
            DESCENT_RETRY_FAILURES="connection",
        )
    )
    job_id = make_job(SPEC)
    assert take_lease(job_id, "doomed/1").attempt == 1
    expire_lease(job_id)
    assert run_job(job_id, worker="w/2") == "skipped"
    job = job_row(job_id)
    assert job.status == "failed" and "lost workers are not retried" in job.error


# ------------------------------------------------------------------ failure classes


def test_out_of_memory_fails_at_once_with_its_reason(
    sqlite_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def oom(self: Trainer) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Trainer, "train", oom)
    job_id = make_job(SPEC)
    assert run_job(job_id, worker="w/1") == "failed"
    job = job_row(job_id)
    assert job.error == "out of memory: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert job.stop["failure"] == "out_of_memory" and job.attempt == 1


def test_a_non_finite_loss_fails_at_once(sqlite_env: Settings) -> None:
    # The largest learning rate the spec accepts, with momentum: the loss overflows.
    spec = {**SPEC, "optimizer": {"name": "sgd", "lr": 100.0, "momentum": 0.9}, "schedule": None}
    job_id = make_job({k: v for k, v in spec.items() if v is not None})
    assert run_job(job_id, worker="w/1") == "failed"
    job = job_row(job_id)
    assert job.stop["failure"] == "non_finite_loss" and "lower the learning rate" in job.error


def test_a_bug_fails_the_job_as_internal_without_a_retry(
    sqlite_env: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception of no known class (a bug): failed at once as "internal", with the
    exception named for the user and its traceback logged for whoever runs the service."""
    job_id = make_job(SPEC)
    real_epoch_end = runner.WorkerHooks.on_epoch_end

    def buggy(self: runner.WorkerHooks, trainer: Trainer, record: Any) -> None:
        if record.epoch == 3:
            raise KeyError("no such metric")
        real_epoch_end(self, trainer, record)

    monkeypatch.setattr(runner.WorkerHooks, "on_epoch_end", buggy)
    with caplog.at_level("ERROR", logger="worker.runner"):
        assert run_job(job_id, worker="w/1") == "failed"
    job = job_row(job_id)
    assert job.status == "failed" and job.attempt == 1 and job.worker is None
    assert job.stop["failure"] == "internal" and job.stop["epoch"] == 2
    assert job.error == "internal error: KeyError: 'no such metric'"
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)
    assert run_job(job_id, worker="w/2") == "skipped"  # not retried


def test_a_lost_connection_is_retried_from_the_last_checkpoint(
    sqlite_env: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = make_job(SPEC)
    real_epoch_end = runner.WorkerHooks.on_epoch_end

    def flaky(self: runner.WorkerHooks, trainer: Trainer, record: Any) -> None:
        if record.epoch == 4:
            raise OperationalError("INSERT ...", {}, Exception("server closed the connection"))
        real_epoch_end(self, trainer, record)

    monkeypatch.setattr(runner.WorkerHooks, "on_epoch_end", flaky)
    with pytest.raises(RetryableFailure) as raised:
        run_job(job_id, worker="w/1")
    assert raised.value.failure == "connection"
    assert "server closed the connection" in raised.value.message
    job = job_row(job_id)  # the lease is given back for the retry
    assert job.status == "queued" and job.worker is None and job.epoch == 3
    monkeypatch.setattr(runner.WorkerHooks, "on_epoch_end", real_epoch_end)
    with caplog.at_level("INFO", logger="worker.runner"):
        assert run_job(job_id, worker="w/2") == "succeeded"
    assert "resumes after epoch 3" in caplog.text
    assert job_row(job_id).attempt == 2
    assert_same_run(job_id, SPEC)


def test_a_preempted_job_stops_at_its_next_step_and_is_handed_back(
    sqlite_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM sets runner.PREEMPTED (worker/app.py): the job stops within the epoch it is in,
    keeps every finished epoch, and is queued again without counting an attempt."""
    from worker.tasks import hand_back

    job_id = make_job(SPEC)
    real_epoch_end = runner.WorkerHooks.on_epoch_end
    steps: list[int] = []
    real_should_stop = runner.WorkerHooks.should_stop

    def preempt_in_epoch_4(self: runner.WorkerHooks, trainer: Trainer, record: Any) -> None:
        real_epoch_end(self, trainer, record)
        if record.epoch == 3:
            self.recorder.wait(3)  # epoch 3 committed (on the recorder thread) before epoch 4
            steps.clear()

    def counting(self: runner.WorkerHooks) -> bool:
        steps.append(1)
        if len(steps) == 3 and job_row(job_id).epoch == 3:
            runner.PREEMPTED.set()  # the signal, during the third step of epoch 4
        return real_should_stop(self)

    monkeypatch.setattr(runner.WorkerHooks, "on_epoch_end", preempt_in_epoch_4)
    monkeypatch.setattr(runner.WorkerHooks, "should_stop", counting)
    sent: list[tuple[str, list[str], str]] = []

    class App:
        def send_task(self, name: str, args: list[str], queue: str) -> None:
            sent.append((name, args, queue))

    try:
        assert run_job(job_id, worker="w/1") == "preempted"
        assert len(steps) == 3  # stopped at the step after the signal, not the epoch's end
        job = job_row(job_id)
        assert job.status == "running" and job.worker == "w/1" and job.epoch == 3
        hand_back(App(), job_id, "w/1")
    finally:
        runner.PREEMPTED.clear()
    assert sent == [("training.run", [job_id], "cpu")]
    job = job_row(job_id)
    assert job.status == "queued" and job.worker is None and job.heartbeat_at is None
    assert job.unsent_since is None  # its message recorded as sent: never sent again
    assert job.attempt == 0 and job.epoch == 3 and sorted(stored_metrics(job_id)) == [1, 2, 3]
    monkeypatch.undo()
    assert run_job(job_id, worker="w/2") == "succeeded"
    assert job_row(job_id).attempt == 1  # the preemption did not count
    assert_same_run(job_id, SPEC)


def test_a_preempted_job_the_broker_cannot_take_is_left_for_the_sweeper(
    fast_lease: Settings,
) -> None:
    from worker.tasks import hand_back

    job_id = make_job(SPEC)
    assert take_lease(job_id, "w/1").attempt == 1

    class DownBroker:
        def send_task(self, *args: Any, **kwargs: Any) -> None:
            raise ConnectionError("redis is down")

    hand_back(DownBroker(), job_id, "w/1")
    job = job_row(job_id)
    assert job.status == "running" and job.heartbeat_at is None and job.attempt == 1
    sent: list[str] = []
    assert sweep(get_sessionmaker(), lambda job, queue: sent.append(job), fast_lease) == [job_id]
    assert sent == [job_id]


def test_the_task_retries_connection_failures_with_a_capped_backoff() -> None:
    from worker.tasks import backoff

    assert [backoff(n, 60) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_a_used_up_compute_budget_stops_the_job(sqlite_env: Settings) -> None:
    with session_scope() as session:
        create_user(session, "local", {"device_hours": 1e-9})
    job_id = make_job({**SPEC, "training": {**SPEC["training"], "epochs": 50}})
    assert run_job(job_id, worker="w/1") == "failed"
    job = job_row(job_id)
    assert job.stop["reason"] == "budget" and "compute budget" in job.error
    assert job.epoch < 50 and job.runtime_seconds > 0
    with session_scope() as session:
        set_limits(session, "local", {"device_hours": "default"})


# ------------------------------------------------------------------ the sweeper


def test_the_sweeper_queues_again_jobs_whose_worker_died(fast_lease: Settings) -> None:
    dead, live, doomed, cancelled = (make_job(SPEC) for _ in range(4))
    with session_scope() as session:
        old = utcnow().replace(year=2000)
        session.execute(
            update(Job)
            .where(Job.id.in_([dead, doomed, cancelled]))
            .values(status=JobStatus.RUNNING, worker="gone/1", heartbeat_at=old, attempt=1)
        )
        session.execute(update(Job).where(Job.id == doomed).values(attempt=3))
        session.execute(update(Job).where(Job.id == cancelled).values(cancel_requested=True))
        session.execute(
            update(Job)
            .where(Job.id == live)
            .values(status=JobStatus.RUNNING, worker="alive/1", heartbeat_at=utcnow())
        )
    sent: list[tuple[str, str]] = []
    sessions = get_sessionmaker()
    assert sweep(sessions, lambda job_id, queue: sent.append((job_id, queue)), fast_lease) == [dead]
    assert sent == [(dead, "cpu")]
    assert job_row(dead).status == "queued" and job_row(dead).worker is None
    assert job_row(live).status == "running"
    assert job_row(doomed).status == "failed" and "lost on each of its 3" in job_row(doomed).error
    assert job_row(cancelled).status == "cancelled"
    # A second sweeper (another worker) finds nothing left to do: one send, not two.
    assert sweep(sessions, lambda *a: sent.append(a), fast_lease) == [] and len(sent) == 1
    assert run_job(dead, worker="w/2") == "succeeded" and job_row(dead).attempt == 2


def test_a_restarted_worker_resumes_its_dead_predecessors_jobs_at_once(
    db_env: Settings,
) -> None:
    # `descent serve` started the worker again after the OOM killer took the one before:
    # same node name, new process. The dead one's lease is fresh, yet its job resumes now,
    # not after the lease timeout (30 s); a live process's lease, or another node's, stays.
    from worker.app import release_dead_leases

    node = "descent-embedded@host"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan, live, elsewhere = (make_job(SPEC) for _ in range(3))
    holders = {
        orphan: f"{node}/{dead.pid}",
        live: f"{node}/{os.getppid()}",
        elsewhere: f"other@host/{dead.pid}",
    }
    with session_scope() as session:
        for job_id, holder in holders.items():
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(status=JobStatus.RUNNING, worker=holder, heartbeat_at=utcnow(), attempt=1)
            )
    sessions = get_sessionmaker()
    assert sweep(sessions, lambda *a: None, db_env) == []  # every lease is fresh
    assert release_dead_leases(sessions.kw["bind"], node) == [orphan]
    sent: list[str] = []
    assert sweep(sessions, lambda job_id, queue: sent.append(job_id), db_env) == [orphan]
    assert sent == [orphan] and job_row(orphan).status == "queued"
    assert {job_row(j).worker for j in (live, elsewhere)} == {holders[live], holders[elsewhere]}
    assert run_job(orphan, worker=f"{node}/{os.getpid()}") == "succeeded"
    assert job_row(orphan).attempt == 2


def test_a_failed_send_leaves_the_job_for_the_next_sweep(fast_lease: Settings) -> None:
    job_id = make_job(SPEC)
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status=JobStatus.RUNNING, worker="gone/1", heartbeat_at=None, attempt=1)
        )

    def broker_down(job_id: str, queue: str) -> None:
        raise ConnectionError("broker down")

    assert sweep(get_sessionmaker(), broker_down, fast_lease) == []
    assert job_row(job_id).status == "running"
    assert sweep(get_sessionmaker(), lambda *a: None, fast_lease) == [job_id]


# ------------------------------------------------------------------ queued, never sent


def with_grace(settings: Settings, seconds: float) -> Settings:
    return settings.model_copy(update={"resend_grace_seconds": seconds})


def test_a_job_committed_but_never_sent_is_sent_by_one_sweep_after_the_grace(
    db_env: Settings,
) -> None:
    """The job's row is committed as queued, and its sender dies before sending it. No
    sweep sends it within the grace; after it, two sweepers at once send it once, later
    sweeps never again, and the job runs once (the original message, had it gone out after
    all, does nothing)."""
    grace = scaled(1.0)
    settings = with_grace(db_env, grace)
    committed = time.time()
    job_id = make_job(SPEC)
    sent: list[tuple[str, str, float]] = []

    def send(job: str, queue: str) -> None:
        sent.append((job, queue, time.time()))

    engines = [make_engine(db_env.database_url, pooled=False) for _ in range(2)]
    sessions = [sessionmaker(engine) for engine in engines]
    assert sweep(sessions[0], send, settings) == [] and sent == []  # within the grace
    assert job_row(job_id).unsent_since is not None and job_row(job_id).status == "queued"
    wait_for("the grace to pass", lambda: time.time() > committed + grace, 10 + grace)
    start = threading.Barrier(2)
    found: list[list[str]] = []

    def one(made: sessionmaker[Session]) -> None:
        start.wait(timeout=10)
        found.append(sweep(made, send, settings))

    threads = [threading.Thread(target=one, args=(made,)) for made in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(found, key=len) == [[], [job_id]]
    assert [(job, queue) for job, queue, _ in sent] == [(job_id, "cpu")]
    assert sent[0][2] - committed >= grace  # not before the grace
    assert job_row(job_id).unsent_since is None
    assert sweep(sessions[0], send, with_grace(db_env, 0)) == [] and len(sent) == 1
    for engine in engines:
        engine.dispose()
    assert run_job(job_id, worker="w/1") == "succeeded"
    assert run_job(job_id, worker="w/2") == "skipped"  # the original message, late
    job = job_row(job_id)
    assert job.attempt == 1 and sorted(stored_metrics(job_id)) == [1, 2, 3, 4, 5, 6]


def test_a_job_sent_as_usual_is_never_sent_again(fast_lease: Settings) -> None:
    """Each sender records its send: a job submitted through the API, one queued again by
    the sweeper and one whose broker was down for the sweeper's resend; with no grace at
    all, no sweep sends any of them again."""
    from api.jobs.service import enqueue_job

    class Tasks:
        def __init__(self) -> None:
            self.sent: list[str] = []

        def send_training(self, job_id: str, queue: str) -> None:
            self.sent.append(job_id)

    submitted, dead, refused = (make_job(SPEC) for _ in range(3))
    tasks = Tasks()
    enqueue_job(submitted, "cpu", tasks, job_row(submitted).unsent_since)  # type: ignore[arg-type]
    assert tasks.sent == [submitted] and job_row(submitted).unsent_since is None
    take_lease(dead, "gone/1")
    expire_lease(dead)
    sent: list[str] = []
    sessions = get_sessionmaker()
    assert sweep(sessions, lambda job, queue: sent.append(job), fast_lease) == [dead]
    assert job_row(dead).unsent_since is None

    def broker_down(job_id: str, queue: str) -> None:
        raise ConnectionError("broker down")

    # The resend's broker is down: the job stays unsent, and the next sweep sends it.
    assert sweep(sessions, broker_down, with_grace(fast_lease, 0)) == []
    assert job_row(refused).unsent_since is not None
    assert sweep(sessions, lambda job, queue: sent.append(job), with_grace(fast_lease, 0)) == [
        refused
    ]
    assert sent == [dead, refused]
    for _ in range(2):
        assert sweep(sessions, lambda job, queue: sent.append(job), with_grace(fast_lease, 0)) == []
    assert sent == [dead, refused] and tasks.sent == [submitted]
    assert {job_row(j).status for j in (submitted, dead, refused)} == {"queued"}


# ------------------------------------------------------------------ kill during a write


def test_a_kill_during_a_checkpoint_write_loses_nothing(
    fast_lease: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = make_job(SPEC)
    # Killed in the middle of writing epoch 3's resume state.
    assert run_victim(dies_writing("epoch-00003-1.state.pt"), job_id) == -9  # not finished
    job = job_row(job_id)
    # Epoch 2's checkpoint row commits after its metrics; epoch 3's and later epochs' metrics
    # may commit while epoch 3's write is in flight: all are redone and replaced.
    assert job.status == "running" and job.epoch >= 2 and job.worker == "victim/1"
    folder = get_artifacts().job_dir(job_id)
    leftovers = sorted(p.name for p in folder.iterdir())
    assert any(n.startswith(".epoch-00003-1.state.pt.") for n in leftovers), leftovers
    # The previous checkpoint is whole and loads.
    with session_scope() as session:
        last = session.scalars(
            select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.epoch == 2)
        ).one()
    trainer = Trainer(JobSpec.model_validate(SPEC)).setup()
    artifacts = get_artifacts()
    trainer.load_checkpoint(artifacts.path(last.state_path), artifacts.path(last.weights_path))
    assert trainer.epoch == 2

    expire_lease(job_id)  # the victim's lease times out
    with caplog.at_level("INFO", logger="worker.runner"):
        assert run_job(job_id, worker="rescuer/2") == "succeeded"
    assert "resumes after epoch 2" in caplog.text
    job = job_row(job_id)
    assert job.attempt == 2 and job.epoch == 6
    assert files_match_rows(job_id)  # the temp file and the orphan weights are swept
    assert_same_run(job_id, SPEC)


class Died(BaseException):
    """Stands for a worker that dies right after an epoch's commit."""


def test_a_damaged_last_checkpoint_falls_back_to_the_one_before(
    fast_lease: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spec = {**SPEC, "checkpoints": {"keep_top_k": 6, "min_interval_seconds": 0}}
    job_id = make_job(spec)
    real_epoch_end = runner.WorkerHooks.on_epoch_end

    def dies_after_epoch_4(self: runner.WorkerHooks, trainer: Trainer, record: Any) -> None:
        real_epoch_end(self, trainer, record)
        if record.epoch == 4:
            raise Died

    monkeypatch.setattr(runner.WorkerHooks, "on_epoch_end", dies_after_epoch_4)
    with pytest.raises(Died):
        run_job(job_id, worker="first/1")
    monkeypatch.setattr(runner.WorkerHooks, "on_epoch_end", real_epoch_end)
    with session_scope() as session:
        last = session.scalars(
            select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.epoch == 4)
        ).one()
    path = get_artifacts().path(last.weights_path)
    path.write_bytes(path.read_bytes()[:-8] + b"\x00" * 8)  # bit rot in the last one
    expire_lease(job_id)
    with caplog.at_level("INFO", logger="worker.runner"):
        assert run_job(job_id, worker="second/2") == "succeeded"
    assert "checkpoint of epoch 4 does not load" in caplog.text
    assert "resumes after epoch 3" in caplog.text
    assert_same_run(job_id, spec)


def test_a_second_run_sweeps_what_a_first_run_lost_before_its_first_epoch_left(
    sqlite_env: Settings,
) -> None:
    """A job's first run looks for no earlier attempt's work (there is none). A run after a
    lost one does, even when the lost run committed no epoch: the checkpoint files it stored
    before its worker died are swept, and the job trains as an uninterrupted run would."""
    job_id = make_job(SPEC)
    first = take_lease(job_id, "w/1")
    assert runner.first_run(first)
    folder = get_artifacts().job_dir(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    stray = folder / "epoch-00001-1.safetensors"  # stored; its row never committed
    stray.write_bytes(b"weights of a run that died")
    expire_lease(job_id)  # w/1 died before its first epoch's commit
    assert run_job(job_id, worker="w/2") == "succeeded"
    job = job_row(job_id)
    assert job.attempt == 2 and job.epoch == 6
    assert not stray.exists() and files_match_rows(job_id)
    assert_same_run(job_id, SPEC)

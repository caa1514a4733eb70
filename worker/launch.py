"""A job on several processes (training.processes > 1), run from the worker's task.

The task's process stays the job's coordinator: it holds the lease (heartbeats, the cancel
flag) and launches the ranks with core.distributed (PyTorch's elastic launcher). Rank 0
writes the job's epochs and checkpoints itself, through the same WorkerHooks as a job on
one process, under the coordinator's worker identity (so the lease checks of each write
hold); the other ranks only train. What the coordinator learns while they run reaches them
as flag files in a folder of this run alone: cancelled, lost (the lease) and preempted
(the worker is shutting down); every rank reads them at each step and the ranks vote, so
all of them stop at the same step.

A rank that raises fails the launch (the launcher stops the others) and its error is
raised here as the same kind of error, so the job fails or is retried under the usual
failure classes; a rank that dies without an error (SIGKILL, the OOM killer) is a lost
worker: retried from the job's last checkpoint by default.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch.distributed as dist

from core import distributed
from core.resources import Resources
from core.results import FitResult
from core.spec import JobSpec
from core.train import TrainerHooks
from descent.settings import get_settings
from store.artifacts import get_artifacts
from store.models import Job
from worker import runner
from worker.memory import keep_freed_memory

# How often the coordinator copies its lease's events into the flag files (seconds).
RELAY_EVERY = 0.05
CONNECTION_ERRORS = {
    "OperationalError",
    "DisconnectionError",
    "TimeoutError",
    "ConnectionError",
    "InterfaceError",
}


class _Flag:
    """An Event a rank reads from a file the coordinator creates."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def is_set(self) -> bool:
        return self.path.exists()


class _Lease:
    """The coordinator's lease, as a rank sees it."""

    def __init__(self, worker: str, flags: Path) -> None:
        self.worker = worker
        self.cancelled, self.lost = _Flag(flags / "cancelled"), _Flag(flags / "lost")
        self.preempted = _Flag(flags / "preempted")


class _RankZeroHooks(runner.WorkerHooks):
    def should_stop(self) -> bool:
        return super().should_stop() or self.lease.preempted.is_set()  # type: ignore[attr-defined]


class _RankHooks(TrainerHooks):
    def __init__(self, lease: _Lease) -> None:
        self.lease = lease

    def should_stop(self) -> bool:
        lease = self.lease
        return lease.cancelled.is_set() or lease.lost.is_set() or lease.preempted.is_set()


def train(
    job: Job,
    spec: JobSpec,
    worker: str,
    lease: runner.Lease,
    hooks: runner.WorkerHooks,
    resources: Resources | None,
) -> FitResult:
    """Train the job on spec.training.processes ranks; rank 0's result. The hooks' stop
    reasons (budget, runtime, pruner) are those rank 0 found."""
    fields = {
        "id": job.id,
        "owner": job.owner,
        "attempt": job.attempt,
        "epoch": job.epoch,
        "mode": job.mode,
    }
    with tempfile.TemporaryDirectory(prefix=f"descent-{job.id}-") as tmp:
        flags = Path(tmp)
        done = threading.Event()

        def relay() -> None:
            events = {
                "cancelled": lease.cancelled,
                "lost": lease.lost,
                "preempted": runner.PREEMPTED,
            }
            while not done.wait(RELAY_EVERY):
                for name, event in events.items():
                    if event.is_set():
                        (flags / name).touch()

        thread = threading.Thread(target=relay, name=f"relay-{job.id}", daemon=True)
        thread.start()
        args = (fields, spec.model_dump(mode="json"), worker, tmp, hooks.trial, hooks.pruned)
        try:
            results = distributed.launch(
                _rank,
                (*args, resources),
                spec.training.processes,
                flags,
                run_id=f"{job.id}-{job.attempt}",
            )
        except distributed.RankFailed as exc:
            if exc.kind == "LeaseLost":
                raise runner.LeaseLost(job.id) from None
            if exc.kind in CONNECTION_ERRORS:
                raise ConnectionError(f"rank {exc.rank}: {exc}") from None
            raise
        finally:
            done.set()
            thread.join()
    out = results[0]
    hooks.budget_used_up = out["budget_used_up"]
    hooks.runtime_used_up = out["runtime_used_up"]
    hooks.pruned = out["pruned"]
    result: FitResult = out["result"]
    return result


def _rank(
    fields: dict[str, Any],
    spec_json: dict[str, Any],
    worker: str,
    flags: str,
    trial: bool,
    pruned: dict[str, Any] | None,
    resources: Resources | None,
) -> dict[str, Any] | None:
    """One rank of the job (a spawned process): resume from the job's last checkpoint and
    train; rank 0 records every epoch through the worker's hooks."""
    distributed.start_rank(spec_json["training"]["device"])
    rank = dist.get_rank()
    try:
        spec = JobSpec.model_validate(spec_json)
        settings, artifacts = get_settings(), get_artifacts()
        keep_freed_memory(settings.worker_malloc_keep_mb)  # as in the worker's own process
        lease = _Lease(worker, Path(flags))
        job = SimpleNamespace(**fields)
        hooks: Any = _RankHooks(lease)
        if rank == 0:
            hooks = _RankZeroHooks(job, lease, artifacts, spec.checkpoints.keep_top_k, settings)  # type: ignore[arg-type]
            hooks.trial, hooks.pruned = trial, pruned
        try:
            first = runner.first_run(job)  # type: ignore[arg-type]
            trainer = runner.resume(spec, hooks, job.id, artifacts, resources, first=first)
            if rank == 0:
                hooks.parameters = trainer.parameter_counts()
                runtime = runner._runtime(job.id)
                hooks.limit_runtime(spec.training.max_runtime_seconds, runtime, trainer.epoch)
                hooks.start_clock()
            result = trainer.train()
            if rank == 0:
                hooks.finish()  # every epoch committed, the last checkpoint durable
        except BaseException:
            if rank == 0:
                hooks.abandon()  # a checkpoint handed off is kept: a retry resumes from it
            raise
        finally:
            if rank == 0:
                hooks.close()
    finally:
        dist.destroy_process_group()
    if rank != 0:
        return None
    return {
        "result": result,
        "budget_used_up": hooks.budget_used_up,
        "runtime_used_up": hooks.runtime_used_up,
        "pruned": hooks.pruned,
    }

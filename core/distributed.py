"""One job on several processes: data-parallel training with torch.distributed.

A spec with ``training.processes: N`` trains on N processes (ranks) launched by PyTorch's
own elastic launcher (the API behind ``torchrun``) on this machine: gloo on the CPU, NCCL
on CUDA with one GPU per rank. ``batch_size`` stays the global batch: every rank draws the
same epoch permutation and takes its contiguous share (batch_size / N rows) of each batch,
and DistributedDataParallel averages the gradients, so N ranks take the steps one process
would (up to float rounding). Every rank evaluates the whole validation split and rank 0's
numbers are used by all (see core.train.Trainer). Rank 0 alone returns a result and is the
one a caller gives hooks that write metrics and checkpoints (the model's own, unwrapped
names).

    result = fit({"dataset": {"name": "digits"}, "training": {"processes": 2}})

A rank that raises is recorded (launch's error_dir) and rebuilt as the same kind of error
in the caller (``rank_error``); a rank that dies without a Python error (SIGKILL, the OOM
killer) is a RankDied. Either way the launcher stops the other ranks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from core.errors import NonFiniteLoss, TrainingError
from core.resources import Resources
from core.results import FitResult
from core.spec import JobSpec
from core.train import Trainer, resolve_device


class RankFailed(Exception):
    """A rank raised an error the core does not know (its class name in ``kind``)."""

    def __init__(self, kind: str, message: str, rank: int) -> None:
        super().__init__(message)
        self.kind, self.rank = kind, rank


class RankDied(Exception):
    """A rank ended without a Python error: killed (SIGKILL, the OOM killer) or crashed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(
    entrypoint: Callable[..., Any],
    args: tuple[Any, ...],
    processes: int,
    error_dir: str | os.PathLike[str],
    *,
    run_id: str | None = None,
) -> dict[int, Any]:
    """Run entrypoint(*args) on ``processes`` ranks of one job; each rank's return value.

    entrypoint must be a module-level function (the ranks are spawned) that calls
    start_rank first; guarded(...) records its errors in error_dir, which should be a
    folder of this run alone. Raises the first failed rank's error (see rank_error).
    """
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=run_id or uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        max_restarts=0,  # a failed rank fails the launch; the caller resumes from a checkpoint
        monitor_interval=0.1,
        start_method="spawn",
    )
    try:
        return elastic_launch(config, _guarded)(entrypoint, str(error_dir), *args)
    except ChildFailedError as exc:
        raise rank_error(error_dir, exc) from None


def _guarded(entrypoint: Callable[..., Any], error_dir: str, *args: Any) -> Any:
    """A rank: entrypoint(*args), its error recorded in error_dir before it is raised."""
    try:
        return entrypoint(*args)
    except BaseException as exc:
        rank = int(os.environ.get("RANK", "0"))
        record = {
            "kind": type(exc).__name__,
            "message": str(exc),
            "rank": rank,
            "diagnosis": getattr(exc, "diagnosis", None),
        }
        if isinstance(exc, NonFiniteLoss):
            record.update(value=exc.value, epoch=exc.epoch, step=exc.step)
        Path(error_dir, f"rank-{rank}.json").write_text(json.dumps(record, default=str))
        raise


def rank_error(error_dir: str | os.PathLike[str], failure: ChildFailedError) -> BaseException:
    """The error a failed launch stands for: the first recorded rank error (lowest rank),
    rebuilt as the core's own error where it is one, else RankFailed; RankDied when no
    rank recorded one."""
    records = sorted(
        (json.loads(p.read_text()) for p in Path(error_dir).glob("rank-*.json")),
        key=lambda r: r["rank"],
    )
    recorded = {r["rank"] for r in records}
    # A rank killed by a signal (SIGKILL: the OOM killer, an operator) is the cause; the
    # errors the others then record are the broken collectives (SIGTERM: the launcher
    # stopping the ranks that were left).
    died = sorted(
        (rank, info.exitcode)
        for rank, info in failure.failures.items()
        if rank not in recorded
        and info.exitcode != -signal.SIGTERM
        and (info.exitcode < 0 or not records)
    )
    if died:
        rank, code = died[0]
        return RankDied(f"rank {rank} of the job died (exit code {code})")
    # A rank stopped by the launcher after another failed may also record an error: the
    # collective that broke under it. Prefer an error that is not about the group.
    own = [r for r in records if r["kind"] not in ("DistBackendError", "DistNetworkError")]
    record = (own or records)[0]
    kind, message = record["kind"], record["message"]
    if kind == "NonFiniteLoss":
        error: BaseException = NonFiniteLoss(record["value"], record["epoch"], record["step"])
        error.diagnosis = record["diagnosis"]  # type: ignore[attr-defined]
    elif kind == "TrainingError":
        error = TrainingError(message)
    elif kind == "OutOfMemoryError":
        error = torch.OutOfMemoryError(message)
    else:
        error = RankFailed(kind, message, record["rank"])
    return error


def start_rank(requested: str) -> torch.device:
    """In a launched rank: join the job's process group; this rank's device (on CUDA the
    GPU of its local rank)."""
    device = resolve_device(requested)
    backend = "gloo"
    local_world = int(os.environ["LOCAL_WORLD_SIZE"])
    if device.type == "cpu":
        # The machine's cores shared by the ranks (as torchrun's OMP_NUM_THREADS would):
        # oversubscribed threads make every collective wait on the slowest rank.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        torch.set_num_threads(max(1, (cores or os.cpu_count() or 1) // local_world))
    if device.type == "cuda":
        local, count = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
        if local_world > count:
            raise TrainingError(
                f"training.processes is {local_world}: one GPU per process, and this "
                f"machine has {count}"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return device


def fit(
    spec: JobSpec | dict[str, Any],
    *,
    device: str | None = None,
    resources: Resources | None = None,
    error_dir: str | os.PathLike[str] | None = None,
) -> FitResult:
    """Train a spec from scratch on its training.processes ranks; rank 0's result."""
    spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
    if error_dir is None:
        with tempfile.TemporaryDirectory(prefix="descent-ranks-") as tmp:
            return fit(spec, device=device, resources=resources, error_dir=tmp)
    requested = device or spec.training.device
    args = (spec.model_dump(mode="json"), requested, resources)
    results = launch(_fit_rank, args, spec.training.processes, error_dir)
    result: FitResult = results[0]
    return result


def _fit_rank(spec: dict[str, Any], requested: str, resources: Resources | None) -> Any:
    device = start_rank(requested)
    rank = dist.get_rank()
    try:
        trainer = Trainer(spec, device=device, resources=resources)
        result = trainer.setup().train()
    finally:
        dist.destroy_process_group()
    return result if rank == 0 else None

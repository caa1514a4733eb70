"""How many CPU threads torch uses for a job.

A job whose training step is small (a digits MLP: about a million floating-point operations)
runs on one thread: its operations are too small to gain from being split, and a second
OpenMP thread only waits at each operation's barrier, spinning on a core. In a worker that
core is what the job's own persistence needs (the recorder, the checkpoint writer, the lease,
a study's next trial) and, on a shared host, the API and the database. Measured on 2 cores
(BENCHMARKS.md): a 32-trial study of such MLPs used ~40% less of the worker's CPU on one
thread for the same wall time on a quiet host, and while the host was busy it took 2.7-3.4 s
on one thread against 7-11 s on two (a thread descheduled at a barrier stalls both). A larger
step (a CNN, a wide MLP) uses every thread the worker has (DESCENT_WORKER_THREADS). The
threshold: DESCENT_SINGLE_THREAD_BELOW_FLOPS (0: every job uses the worker's threads).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from core.train import Trainer

log = logging.getLogger(__name__)


def threads_for(trainer: Trainer, below: float) -> int:
    """The threads for this job: one for a step of fewer than ``below`` floating-point
    operations on the CPU (DESCENT_SINGLE_THREAD_BELOW_FLOPS; 4e6 by default), else the
    worker's. Measured on 2 cores, the core alone: MLPs of 1.7-14.5 MFLOP a step train as
    fast on one thread as on two; CNNs of 2.7-4.5 MFLOP are ~10% faster on two, one of 16
    MFLOP 19%, a 430-MFLOP MLP 38%."""
    threads = torch.get_num_threads()
    if trainer.device.type != "cpu" or threads == 1 or below <= 0:
        return threads
    # A layer's forward costs about 2 operations per weight and sample: a model whose
    # parameters alone make the step ten times the threshold is not counted (a backbone's
    # forward pass on the CPU is not free).
    parameters = sum(trainer.parameter_counts().values())
    if 6 * parameters * trainer.spec.training.batch_size >= 10 * below:
        return threads
    flops = step_flops(trainer)
    if flops is None:
        return threads
    return 1 if flops < below else threads


# A step's count by the model's structure, its input and its batch: a study's trials share a
# few models, and counting one takes a few milliseconds of Python (torch's dispatch mode).
_counted: dict[tuple[str, tuple[int, ...], str, int], float | None] = {}
COUNTED_MODELS = 64


def step_flops(trainer: Trainer) -> float | None:
    """``trainer.step_flops()``, remembered for the next job of the same model (None: a
    model the counter cannot run)."""
    sample = trainer.data.x_train
    key = (repr(trainer.model), tuple(sample.shape[1:]), str(sample.dtype),
           trainer.spec.training.batch_size)  # fmt: skip
    if key not in _counted:
        try:
            _counted[key] = trainer.step_flops()
        except Exception as exc:  # noqa: BLE001 - a model the counter cannot run: the default
            log.debug("could not count a step's operations: %s", exc)
            _counted[key] = None
        while len(_counted) > COUNTED_MODELS:
            del _counted[next(iter(_counted))]
    return _counted[key]


@contextlib.contextmanager
def job_threads(trainer: Trainer, below: float) -> Iterator[int]:
    """torch's threads set for the job while it trains, the worker's again after."""
    before = torch.get_num_threads()
    threads = threads_for(trainer, below)
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        if threads != before:
            torch.set_num_threads(before)

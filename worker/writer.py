"""Checkpoints written off the training thread, on a cadence.

At the end of an epoch that is due a checkpoint (see ``Cadence``), the training thread takes
a ``Snapshot``: the weights and the resume state with every tensor copied to the CPU, so the
next epoch may change the model at once. A ``CheckpointWriter`` thread then serializes it
and stores both files (``Artifacts.write``: in the local folder, written atomically and
fsynced; in S3, uploaded from memory, with no local file), then commits the checkpoint row,
while the next epoch trains.

At most one write is in flight: the next hand-off first waits for the previous one, so
memory holds one copy of the state at most. A write that failed raises its error on the
training thread at the next hand-off, or when the run drains the writer at its end.

A checkpoint is durable once its row is committed: its files are stored before the row
names them, and retention only ever deletes checkpoints that have a row, so a write in
flight is never deleted; a crash before the commit leaves files no row names, which the
next run sweeps.
"""

import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from core.checkpoint import STATE_SUFFIX, WEIGHTS_SUFFIX
from core.results import EpochRecord
from core.spec import CheckpointSpec
from core.train import CheckpointSnapshot, Trainer
from store.artifacts import Artifacts

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """A checkpoint due at the end of an epoch: the epoch's numbers, and what
    ``Trainer.save_checkpoint`` writes, copied (``Trainer.snapshot``)."""

    epoch: int
    value: float | None  # the monitored metric at this epoch
    is_best: bool
    contents: CheckpointSnapshot


@dataclass
class StoredFiles:
    weights_key: str
    state_key: str
    bytes: int  # of the weights file
    sha256: str  # of the weights file


def store_files(artifacts: Artifacts, stem: str, contents: CheckpointSnapshot) -> StoredFiles:
    """A checkpoint's two files stored under the key ``stem`` (``Artifacts.write``): the
    weights go up as soon as they are encoded, while the resume state is encoded and stored."""
    weights = contents.encode_weights()
    sha256 = hashlib.sha256(weights).hexdigest()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="weights") as pool:
        stored = pool.submit(artifacts.write, f"{stem}{WEIGHTS_SUFFIX}", weights, sha256)
        state_key = artifacts.write(f"{stem}{STATE_SUFFIX}", contents.encode_state())
        return StoredFiles(stored.result(), state_key, len(weights), sha256)


def snapshot(trainer: Trainer, record: EpochRecord) -> Snapshot:
    """A copy of the trainer's checkpoint at the end of ``record``'s epoch."""
    return Snapshot(record.epoch, record.value, record.is_best, trainer.snapshot())


class Cadence:
    """Which epochs get a checkpoint: every ``every_epochs``-th epoch, once
    ``min_interval_seconds`` have passed since the last one; always a new best epoch and the
    last epoch (the epoch limit, or one that stops the run)."""

    def __init__(
        self,
        spec: CheckpointSpec,
        last_epoch: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every, self.interval = spec.every_epochs, spec.min_interval_seconds
        self.last_epoch, self.clock = last_epoch, clock
        self.last_write = clock()

    def due(self, record: EpochRecord) -> bool:
        if record.is_best or record.stop is not None or record.epoch >= self.last_epoch:
            return True
        return record.epoch % self.every == 0 and self.clock() - self.last_write >= self.interval

    def written(self) -> None:
        self.last_write = self.clock()


class CheckpointWriter:
    """One background thread that runs writes one at a time, at most one in flight."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: Future[None] | None = None

    def submit(self, write: Callable[..., None], *args: Any) -> None:
        """Run ``write(*args)`` on the writer thread, once the previous write has ended."""
        self.wait()
        self._pending = self._pool.submit(write, *args)

    def wait(self) -> None:
        """Wait for the write in flight, if any; raise its error if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def drain(self) -> None:
        """Wait for the write in flight and log (not raise) its error: for a run that is
        ending with an error of its own."""
        try:
            self.wait()
        except Exception:
            log.exception("a checkpoint write failed")

    def close(self) -> None:
        self.drain()
        self._pool.shutdown(wait=True)

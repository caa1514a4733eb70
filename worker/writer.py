"""A job's persistence, off the training thread: its epochs' records and its checkpoints.

Two threads per run, each a ``Background`` queue. The recorder commits each epoch's
metrics and the job's progress (worker/runner.py), at most one transaction every 0.2 s:
epochs that end meanwhile go into the next one together, so small epochs make few commits
and a slow database never slows training, it only commits several epochs at once. The
``CheckpointWriter`` stores checkpoints: at the end of an epoch that is due one (see
``Cadence``), the training thread takes a ``Snapshot`` (the weights and the resume state,
every tensor copied to the CPU, so the next epoch may change the model at once); the
writer serializes it, stores both files (``Artifacts.write``: in
the local folder, written atomically and fsynced; in S3, uploaded from memory), waits for
the recorder to have committed that epoch, then commits the checkpoint's row.

A best epoch that is not due is held in memory (a newer best replaces it) and handed
to the writer with the next due checkpoint, or when the run ends however it ends (a crash
loses it, and the resumed run, redoing the same epochs, finds the same best again).

Training never waits for a write. A checkpoint falls due while another is being written:
it waits, and one due after it supersedes it unless it is a best that the newer one is not
(``coalesce``): the last checkpoint and the best are always written, one superseded before
its write started is skipped. Memory holds four copies of the state at most (one being
written, two waiting, a best held). An error of either thread raises on the training
thread at its next hand-off, or when the run waits for both at its end.

A checkpoint is durable once its row is committed: its files are stored before the row
names them, and retention only ever deletes checkpoints that have a row, so a write in
flight is never deleted; a crash before the commit leaves files no row names, which the
next run sweeps. Its row commits after its epoch's metrics, so a resume after it never
misses an epoch's metrics.
"""

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from core.checkpoint import STATE_SUFFIX, WEIGHTS_SUFFIX
from core.results import EpochRecord
from core.spec import CheckpointSpec
from core.train import CheckpointSnapshot, Trainer
from store.artifacts import Artifacts

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    """A checkpoint's two files stored under the key ``stem`` (``Artifacts.write``); to an
    object store, the weights go up as soon as they are encoded, while the resume state is
    encoded and stored."""
    weights = contents.encode_weights()
    sha256 = hashlib.sha256(weights).hexdigest()
    if not artifacts.remote:  # a local folder: nothing to overlap
        weights_key = artifacts.write(f"{stem}{WEIGHTS_SUFFIX}", weights, sha256)
        state_key = artifacts.write(f"{stem}{STATE_SUFFIX}", contents.encode_state())
        return StoredFiles(weights_key, state_key, len(weights), sha256)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="weights") as pool:
        stored = pool.submit(artifacts.write, f"{stem}{WEIGHTS_SUFFIX}", weights, sha256)
        state_key = artifacts.write(f"{stem}{STATE_SUFFIX}", contents.encode_state())
        return StoredFiles(stored.result(), state_key, len(weights), sha256)


def snapshot(trainer: Trainer, record: EpochRecord) -> Snapshot:
    """A copy of the trainer's checkpoint at the end of ``record``'s epoch."""
    return Snapshot(record.epoch, record.value, record.is_best, trainer.snapshot())


# The default interval between checkpoints (``min_interval_seconds`` unset): at least
# AUTO_INTERVAL seconds, and at least the last write's time over WRITE_SHARE.
AUTO_INTERVAL = 1.0
WRITE_SHARE = 0.02

# This process's last checkpoint writes, the last of each model size: {parameters: seconds},
# oldest first, REMEMBERED_SIZES kept. A job's default interval starts from them
# (``expected_write_seconds``), so that a worker's next job of a large model does not store
# its first checkpoint a second in, before its own writes were ever timed (a 2-million-
# parameter CNN's checkpoint took ~0.3 s to upload to an S3 server: 30% of that first
# second), even when the worker ran a small model's jobs in between.
_writes: dict[int, float] = {}
REMEMBERED_SIZES = 16


def expected_write_seconds(parameters: int) -> float:
    """How long a checkpoint of a model this large should take to store, from this process's
    writes: the write of the nearest size at least as large, in proportion; else, as long as
    the largest smaller one's (never more: a write has a fixed cost, and an underestimate
    only writes sooner); 0 before any write."""
    writes = dict(_writes)  # a copy: the writer thread may add one meanwhile
    if parameters <= 0 or not writes:
        return 0.0
    larger = [size for size in writes if size >= parameters]
    if larger:
        size = min(larger)
        return writes[size] * parameters / size
    return writes[max(writes)]


def remember_write(seconds: float, parameters: int) -> None:
    if parameters > 0:
        _writes.pop(parameters, None)
        _writes[parameters] = seconds
        while len(_writes) > REMEMBERED_SIZES:
            del _writes[next(iter(_writes))]


class Cadence:
    """Which epochs are due a checkpoint: every ``every_epochs``-th epoch, once the interval
    has passed since the last one, and always the last epoch (the epoch limit, or one that
    stops the run). The interval is ``min_interval_seconds``, or by default at least a
    second and at least 50 times the last write's time (``wrote``; before the run's first,
    ``write_seconds``: the time this process's writes say it takes for this model):
    writing takes at most 2% of the run, whatever the model's size and the store's speed.
    A best epoch between two due ones is held in memory and written with the next due one
    (worker/runner.py): the best is always written, the run's epochs are never slowed by
    writing each best of an improving run."""

    def __init__(
        self,
        spec: CheckpointSpec,
        last_epoch: int,
        clock: Callable[[], float] = time.monotonic,
        write_seconds: float = 0.0,
    ) -> None:
        self.every, self.fixed = spec.every_epochs, spec.min_interval_seconds
        self.last_epoch, self.clock = last_epoch, clock
        self.last_write = clock()
        # How long the last checkpoint took to store; before the run's first, an estimate
        # (``expected_write_seconds``).
        self.write_seconds = write_seconds

    @property
    def interval(self) -> float:
        if self.fixed is not None:
            return self.fixed
        return max(AUTO_INTERVAL, self.write_seconds / WRITE_SHARE)

    def last(self, record: EpochRecord) -> bool:
        """The run's last epoch: the epoch limit, or one that stops the run."""
        return record.stop is not None or record.epoch >= self.last_epoch

    def due(self, record: EpochRecord) -> bool:
        if self.last(record):
            return True
        return record.epoch % self.every == 0 and self.clock() - self.last_write >= self.interval

    def written(self) -> None:
        """A checkpoint was handed to the writer now."""
        self.last_write = self.clock()

    def wrote(self, seconds: float) -> None:
        """The writer stored one in ``seconds`` (called on its thread)."""
        self.write_seconds = seconds


class Background(Generic[T]):
    """One thread that handles the items put to it, in the order they were put.

    ``batch``: each call of ``handle`` gets every item waiting (epochs that queued while a
    commit ran go into one transaction), else one. ``linger``: calls of ``handle`` start at
    least this many seconds apart (the items put meanwhile wait for the next), except while
    someone waits for them. ``merge(waiting, new)``: the items left
    waiting once ``new`` is put (by default all of them, then ``new``). Each item has a key
    (its epoch) that ``wait`` names. An item's error ends the thread: it is raised on the
    caller's thread by the next ``put`` or ``wait``, and the items still waiting are dropped.
    """

    def __init__(
        self,
        name: str,
        handle: Callable[[list[T]], None],
        *,
        batch: bool,
        merge: Callable[[list[tuple[int, T]], tuple[int, T]], list[tuple[int, T]]] | None = None,
        linger: float = 0.0,
    ) -> None:
        self._handle, self._batch, self._linger = handle, batch, linger
        # When the last call of handle started: the first call lingers too (a short run's
        # epochs commit together, at its end).
        self._last = time.monotonic()
        self._waiters = 0
        self._merge = merge or (lambda waiting, new: [*waiting, new])
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, T]] = []
        self._running: list[tuple[int, T]] = []
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: T, key: int) -> None:
        with self._cond:
            self._raise()
            self._waiting = self._merge(self._waiting, (key, item))
            self._cond.notify_all()

    def wait(self, key: float = math.inf) -> None:
        """Until every item put with a key up to ``key`` is handled (or merged away), at
        once (no lingering); raises the thread's error."""
        with self._cond:
            self._waiters += 1
            self._cond.notify_all()
            try:
                self._cond.wait_for(
                    lambda: (
                        self._error is not None
                        or all(k > key for k, _ in (*self._waiting, *self._running))
                    )
                )
            finally:
                self._waiters -= 1
            self._raise()

    def take(self) -> list[T]:
        """The items still waiting, taken to be handled by the caller (in one transaction
        with its own work), once the call of ``handle`` in progress, if any, has ended;
        raises the thread's error."""
        with self._cond:
            self._cond.wait_for(lambda: self._error is not None or not self._running)
            self._raise()
            taken, self._waiting = self._waiting, []
        return [item for _, item in taken]

    def drain(self) -> None:
        """``wait``, logging (not raising) an error: for a run ending with one of its own."""
        try:
            self.wait()
        except Exception:
            log.exception("%s failed", self._thread.name)

    def close(self) -> None:
        self.drain()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._waiting or self._closed)
                if not self._waiting:
                    return
                # Lingering: items put within ``linger`` of the last call go into the next one
                # together, unless someone waits for them or the queue closes.
                due = self._last + self._linger

                def ready(due: float = due) -> bool:
                    return self._closed or self._waiters > 0 or time.monotonic() >= due

                self._cond.wait_for(ready, timeout=max(0.0, due - time.monotonic()))
                if not self._waiting:  # taken by the caller meanwhile (``take``)
                    continue
                self._last = time.monotonic()
                take = len(self._waiting) if self._batch else 1
                self._running, self._waiting = self._waiting[:take], self._waiting[take:]
            try:
                self._handle([item for _, item in self._running])
            except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread
                with self._cond:
                    self._error, self._waiting, self._running = exc, [], []
                    self._cond.notify_all()
                return
            with self._cond:
                self._running = []
                self._cond.notify_all()


def coalesce(
    waiting: list[tuple[int, Snapshot]], new: tuple[int, Snapshot]
) -> list[tuple[int, Snapshot]]:
    """The checkpoints still worth writing once ``new`` is due: a newer checkpoint
    supersedes one waiting that is not a best (it is no longer the last), and a newer best
    supersedes every one waiting. So at most a best and a later checkpoint wait."""
    keep = [] if new[1].is_best else [(k, s) for k, s in waiting if s.is_best]
    return [*keep, new]


class CheckpointWriter(Background[Snapshot]):
    """The writer thread: checkpoints stored one at a time, never waited for by training;
    those superseded while waiting are skipped (``coalesce``)."""

    def __init__(self, name: str, store: Callable[[Snapshot], None]) -> None:
        super().__init__(name, lambda snaps: store(snaps[0]), batch=False, merge=self._coalesce)

    def supersede(self, snap: Snapshot) -> None:
        """``snap`` is written by the caller (a run's last checkpoint, with the job's end):
        the checkpoints waiting that it supersedes are skipped, as if it had been put."""
        with self._cond:
            self._raise()
            self._waiting = self._coalesce(self._waiting, (snap.epoch, snap))[:-1]

    def _coalesce(
        self, waiting: list[tuple[int, Snapshot]], new: tuple[int, Snapshot]
    ) -> list[tuple[int, Snapshot]]:
        kept = coalesce(waiting, new)
        for epoch, _ in waiting:
            if all(epoch != k for k, _ in kept):
                log.info("%s: epoch %d's checkpoint skipped, superseded by epoch %d's before "
                         "its write began", self._thread.name, epoch, new[0])  # fmt: skip
        return kept

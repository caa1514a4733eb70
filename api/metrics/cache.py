"""Serialized metrics pages, reused while the job they came from has not moved on.

A page is a pure function of the job's stored metrics. The worker commits each epoch's
metric rows together with the job row's progress, so the metrics change only when the job's
row does (a new epoch, a new status, a new attempt after a redelivery). A page is therefore
kept under the version ``(status, epoch, attempt)`` read from that row, and served again
while the row still says the same:

- a page of an unfinished job is served only after checking the row (one primary-key read),
  and for at most ``running_max_age`` seconds, which bounds staleness even for a writer
  that added metric rows before updating the job;
- a page of a finished job cannot change any more; it is served without touching the
  database, and one request re-checks the row every ``final_recheck`` seconds (so a job
  that is deleted or re-run is noticed within about that time).
"""

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class _Entry:
    version: Hashable
    body: bytes
    final: bool
    stored_at: float
    checked_at: float


class MetricsCache:
    def __init__(
        self,
        max_bytes: int = 64 * 1024 * 1024,
        running_max_age: float = 1.0,
        final_recheck: float = 1.0,
    ) -> None:
        self.max_bytes = max_bytes
        self.running_max_age = running_max_age
        self.final_recheck = final_recheck
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._building: weakref.WeakValueDictionary[Hashable, threading.Lock] = (
            weakref.WeakValueDictionary()
        )

    def building(self, key: Hashable) -> threading.Lock:
        """The lock held while one request builds ``key``'s page, so that when a page goes
        stale under many concurrent pollers, one of them rebuilds it and the others wait
        for that page instead of all building the same one."""
        with self._lock:
            lock = self._building.get(key)
            if lock is None:
                lock = self._building[key] = threading.Lock()
            return lock

    def fresh(self, key: Hashable) -> bytes | None:
        """A finished job's page checked against its row less than ``final_recheck`` ago.

        When the check is due, the first caller gets None (and checks the row through
        ``get``); callers meanwhile keep getting the page, rather than all of them queueing
        for the database at once.
        """
        entry = self._entries.get(key)
        if entry is None or not entry.final:
            return None
        now = time.monotonic()
        if now - entry.checked_at < self.final_recheck:
            return entry.body
        with self._lock:
            if now - entry.checked_at < self.final_recheck:
                return entry.body  # another caller took the check
            entry.checked_at = now
            return None

    def get(self, key: Hashable, version: Hashable) -> bytes | None:
        """The page stored under ``key`` if the job's row still has this ``version``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            now = time.monotonic()
            if entry.version != version:
                return None  # the job moved on (or this reader saw it before it did)
            if not entry.final and now - entry.stored_at >= self.running_max_age:
                return None
            entry.checked_at = now
            self._entries.move_to_end(key)
            return entry.body

    def put(self, key: Hashable, version: Hashable, body: bytes, *, final: bool) -> None:
        if len(body) > self.max_bytes // 4:
            return
        now = time.monotonic()
        with self._lock:
            self._drop(key)
            self._entries[key] = _Entry(version, body, final, now, now)
            self._bytes += len(body)
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def discard(self, key: Hashable) -> None:
        with self._lock:
            self._drop(key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry.body)

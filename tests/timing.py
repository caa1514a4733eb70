"""Deadlines that scale with the machine, and the one polling loop the tests wait with.

A deadline is ``base * timeout_scale()``: the base is what the wait needs on an idle
machine (with a margin); the scale is ``DESCENT_TEST_TIMEOUT_SCALE`` where set, otherwise
how much slower this machine runs a fixed CPU-bound loop than the reference machine, times
how loaded its CPUs are now (one-minute load average per CPU), between 1 and 10.
"""

import functools
import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Seconds the loop below takes, at best, on an idle reference machine.
REFERENCE_LOOP_SECONDS = 0.04
MAX_SCALE = 10.0


def _loop() -> float:
    started = time.perf_counter()
    total = 0
    for i in range(500_000):
        total += i * i % 7
    return time.perf_counter() - started


@functools.cache
def cpu_slowness() -> float:
    """How much slower than the reference this machine runs Python (the best of 3 runs)."""
    return max(1.0, min(_loop() for _ in range(3)) / REFERENCE_LOOP_SECONDS)


def cpu_load() -> float:
    """Runnable processes per CPU over the last minute, at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1.0, os.getloadavg()[0] / (cpus or 1))


def timeout_scale() -> float:
    override = os.environ.get("DESCENT_TEST_TIMEOUT_SCALE")
    if override:
        return float(override)
    return min(MAX_SCALE, cpu_slowness() * cpu_load())


def scaled(seconds: float) -> float:
    """A deadline of ``seconds`` on an idle reference machine, on this one now."""
    return seconds * timeout_scale()


def wait_for(
    what: str,
    check: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll ``check()`` until it returns something true, and return that; fail naming
    ``what`` after ``scaled(timeout)`` seconds, with ``detail()`` (a log tail, a state)."""
    limit = scaled(timeout)
    deadline = time.monotonic() + limit
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {limit:.0f} s waiting for {what}{extra}")
        time.sleep(interval)

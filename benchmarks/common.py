"""Helpers shared by the benchmarks: machine description, throwaway PostgreSQL databases and
Redis key spaces (made and cleaned up as tests/conftest.py does), percentiles."""

import os
import platform
import statistics
from collections.abc import Iterator
from contextlib import contextmanager

from tests.databases import throwaway_postgres, throwaway_redis_prefix

PG_ADMIN_URL = os.environ.get(
    "DESCENT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("DESCENT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {platform.system()}"


def load() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews timings."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: list[float]) -> float:
    return statistics.median(values)


@contextmanager
def postgres_database(prefix: str = "descent_bench") -> Iterator[str]:
    """A PostgreSQL database of its own, dropped afterwards; yields its URL."""
    with throwaway_postgres(PG_ADMIN_URL, prefix) as url:
        yield url


@contextmanager
def redis_key_space(prefix: str = "descent-bench") -> Iterator[tuple[str, str]]:
    """(Redis URL, key prefix) of a key space of its own, deleted afterwards."""
    with throwaway_redis_prefix(REDIS_URL, prefix) as key_prefix:
        yield REDIS_URL, key_prefix


CONFIG_KEYS = ("DATABASE_URL", "REDIS_URL", "DESCENT_DATABASE_URL", "DESCENT_BROKER_URL")


def configure(**env: str) -> None:
    """Point this process's settings, engines and sessions at the given environment
    (e.g. DESCENT_DATA_DIR, DATABASE_URL), forgetting the cached ones."""
    from descent.settings import get_settings
    from store import db

    for key in CONFIG_KEYS:
        os.environ.pop(key, None)
    os.environ.update(env)
    if db.get_engine.cache_info().currsize:
        db.get_engine().dispose()
    db.get_engine.cache_clear()
    db.get_sessionmaker.cache_clear()
    get_settings.cache_clear()


# What each kind of process is, by a word of its command line (the first that matches).
PROCESS_KINDS = (
    ("worker", "celery"),
    ("worker", "worker"),
    ("s3 server", "moto"),
    ("api", "uvicorn"),
    ("api", " api"),
    ("api", "serve"),
    ("postgresql", "postgres"),
    ("redis", "redis"),
)


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by the machine's processes, summed by kind
    (``PROCESS_KINDS``; "benchmark" is this process): two readings' difference tells where
    the CPU went meanwhile. Linux only ({} elsewhere); processes that ended are not counted."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[str, float] = {}
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        if int(pid) == os.getpid():
            kind = "benchmark"
        else:
            kind = next((k for k, word in PROCESS_KINDS if word in command), "other")
        out[kind] = out.get(kind, 0.0) + used
    return out


def cpu_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What each kind of process used between two ``cpu_seconds()`` readings."""
    return {k: after[k] - before.get(k, 0.0) for k in after if after[k] - before.get(k, 0.0) > 0}

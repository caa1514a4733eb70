"""What ``GET /metrics`` reports, gathered when Prometheus scrapes.

- ``descent_jobs{status}``: jobs in each status, counted in the database at each scrape.
- ``descent_queue_length{queue}``: tasks waiting in each broker queue. On Redis, the length
  of the queue's lists (under the broker key prefix); on the embedded broker, the visible
  messages in its message table.
- ``descent_epoch_duration_seconds``: a histogram of every epoch's ``epoch_seconds``, counted
  by the worker in the transaction that commits the epoch (store/counters.py), one row per
  bucket per worker; a scrape sums those few rows. It is the same whichever API process
  answers, survives restarts, costs the same however large the metrics table grows, and
  never goes down: an epoch a resumed job redoes is counted again.
- ``descent_http_request_duration_seconds{method,route,status}``: time to the response's
  first byte (so a long event stream counts its start, not its length), labelled by the
  route's template (``/v1/jobs/{job_id}``), never the raw path. Kept in each API process:
  with ``descent api --workers N`` each scrape sees one process's share.

A part that cannot be read (database or broker down) is left out of that scrape and logged;
the rest is still served.
"""

import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select, text

from descent.settings import Settings
from store.counters import EPOCH_BUCKETS, epoch_histogram
from store.db import make_engine, session_scope
from store.models import Job, JobStatus

logger = logging.getLogger("api.monitoring")

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# kombu's Redis transport keeps a queue's tasks of priority p > 0 in "<queue>\x06\x16<p>".
REDIS_PRIORITY_STEPS = (0, 3, 6, 9)
REDIS_PRIORITY_SEP = "\x06\x16"


def job_counts() -> dict[str, int]:
    with session_scope() as session:
        rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    counts = dict.fromkeys(JobStatus.ALL, 0)
    counts.update({status: int(n) for status, n in rows})
    return counts


def epoch_durations() -> tuple[list[int], int, float]:
    """(cumulative count per bucket of EPOCH_BUCKETS, count, sum) of the counted epochs."""
    with session_scope() as session:
        return epoch_histogram(session)


class QueueLengths:
    """Reads the broker's queue lengths; keeps one client or engine for all scrapes."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.broker_url
        self.prefix = settings.broker_key_prefix
        self.queues = list(dict.fromkeys([settings.cpu_queue, settings.gpu_queue]))
        self._client: Any = None
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def read(self) -> dict[str, int]:
        with self._lock:
            if self.url.startswith("sqla+"):
                return self._read_sql()
            if self.url.startswith(("redis://", "rediss://", "unix://")):
                return self._read_redis()
        return {}  # a broker this service does not know how to measure

    def _read_redis(self) -> dict[str, int]:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(
                self.url, socket_timeout=2, socket_connect_timeout=2
            )
        pipe = self._client.pipeline(transaction=False)
        for queue in self.queues:
            for step in REDIS_PRIORITY_STEPS:
                suffix = f"{REDIS_PRIORITY_SEP}{step}" if step else ""
                pipe.llen(f"{self.prefix}{queue}{suffix}")
        lengths = pipe.execute()
        n = len(REDIS_PRIORITY_STEPS)
        return {q: int(sum(lengths[i * n : (i + 1) * n])) for i, q in enumerate(self.queues)}

    def _read_sql(self) -> dict[str, int]:
        if self._engine is None:
            self._engine = make_engine(self.url.removeprefix("sqla+"))
        counts = dict.fromkeys(self.queues, 0)
        with self._engine.connect() as conn:
            tables = set(self._engine.dialect.get_table_names(conn))
            if {"kombu_queue", "kombu_message"} <= tables:  # made by the first send
                rows = conn.execute(
                    text(
                        "SELECT q.name, COUNT(m.id) FROM kombu_queue q "
                        "LEFT JOIN kombu_message m ON m.queue_id = q.id AND m.visible = :yes "
                        "GROUP BY q.name"
                    ),
                    {"yes": True},
                )
                counts.update({name: int(n) for name, n in rows if name in counts})
        return counts

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._engine is not None:
            self._engine.dispose()


class ServiceCollector(Collector):
    """The gauges and the epoch histogram, read from the database and broker per scrape."""

    def __init__(self, queues: QueueLengths) -> None:
        self.queues = queues

    def collect(self) -> Iterator[Metric]:
        try:
            jobs = GaugeMetricFamily("descent_jobs", "Jobs by status.", labels=["status"])
            for status, n in job_counts().items():
                jobs.add_metric([status], n)
            yield jobs
        except Exception as exc:  # noqa: BLE001 - a scrape reports what it can
            logger.warning("metrics: cannot count jobs: %s", _reason(exc))
        try:
            lengths = self.queues.read()
            queue = GaugeMetricFamily(
                "descent_queue_length", "Tasks waiting in a broker queue.", labels=["queue"]
            )
            for name, n in lengths.items():
                queue.add_metric([name], n)
            yield queue
        except Exception as exc:  # noqa: BLE001
            logger.warning("metrics: cannot read the broker's queues: %s", _reason(exc))
        try:
            buckets, count, total = epoch_durations()
            bounds = [(_bound(b), n) for b, n in zip(EPOCH_BUCKETS, buckets, strict=True)]
            yield HistogramMetricFamily(
                "descent_epoch_duration_seconds",
                "Wall time of each committed training epoch (epoch_seconds), redone ones included.",
                buckets=[*bounds, ("+Inf", count)],
                sum_value=total,
            )
        except Exception as exc:  # noqa: BLE001
            logger.warning("metrics: cannot read epoch durations: %s", _reason(exc))


class Telemetry:
    """One registry per app: the per-scrape collector and the HTTP latency histogram."""

    def __init__(self, settings: Settings) -> None:
        # No "_created" series beside each histogram: a scrape has no use for them.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        # The standard process_* (CPU, memory, open files) and python_* (gc, version) series.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.queues = QueueLengths(settings)
        self.registry.register(ServiceCollector(self.queues))
        self.http_latency = Histogram(
            "descent_http_request_duration_seconds",
            "Time from request to the response's first byte, by route template.",
            ["method", "route", "status"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )

    def close(self) -> None:
        self.queues.close()


def _bound(value: float) -> str:
    return repr(float(value))


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else orig.__class__.__name__

"""Metrics pages: per-epoch records (step 0 rows) in epoch order, after a cursor.

This is the endpoint clients poll, so it stays lean: one range query over the metrics
table's (job_id, epoch, step, name) index, records built as plain dicts, JSON written once,
and the written page reused while the job's row says nothing has changed (see cache.py).
A finished job's page is answered from memory, without a session or a thread; otherwise the
page is read in the threadpool in a short read-only session of its own.
"""

import json
import math
from collections.abc import Hashable, Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import InvalidParameter, NotFound
from api.metrics.cache import MetricsCache
from api.metrics.downsample import Record, downsample, key_metrics
from descent.settings import get_settings
from store.db import session_scope
from store.models import Job, JobStatus, Metric

DEFAULT_LIMIT = 100
MAX_EPOCH = 2**31 - 1  # the epoch column's range (int4 on PostgreSQL)


def page_size(limit: int | None, max_points: int | None) -> int:
    """The number of epochs a page covers."""
    page_limit = get_settings().metrics_page_limit
    if limit is None:
        # A downsampled view is for plotting a whole history: take the largest page.
        return page_limit if max_points is not None else min(DEFAULT_LIMIT, page_limit)
    if limit > page_limit:
        raise InvalidParameter.one(("query", "limit"), f"must be at most {page_limit}", limit)
    return limit


def cached_page(
    cache: MetricsCache,
    job_id: str,
    *,
    owner: str,
    after: int,
    limit: int,
    max_points: int | None,
) -> bytes | None:
    """A finished job's page, straight from memory: no database, no thread (see cache.py)."""
    return cache.fresh(_key(job_id, owner, after, limit, max_points))


def metrics_page(
    cache: MetricsCache,
    job_id: str,
    *,
    owner: str,
    after: int,
    limit: int,
    max_points: int | None,
) -> bytes:
    """The JSON body ``{"items": [...], "next": epoch, "complete": bool}``, ready to send.

    ``next`` is always the cursor to continue from: the last epoch returned, or ``after``
    when the page is empty. ``complete`` is true once the job has ended and no epoch after
    this page exists, so a poller knows when to stop.

    Blocking: call it in the threadpool. It only reads, so it needs no request transaction.
    """
    with session_scope() as session:
        return _metrics_page(session, cache, job_id, owner, after, limit, max_points)


def _metrics_page(
    session: Session,
    cache: MetricsCache,
    job_id: str,
    owner: str,
    after: int,
    limit: int,
    max_points: int | None,
) -> bytes:
    job = session.execute(
        select(Job.status, Job.epoch, Job.attempt, Job.monitor).where(
            Job.id == job_id, Job.owner == owner
        )
    ).one_or_none()
    key = _key(job_id, owner, after, limit, max_points)
    if job is None:
        cache.discard(key)
        raise NotFound(f"job {job_id} not found")
    version = (job.status, job.epoch, job.attempt)
    body = cache.get(key, version)
    if body is not None:
        return body

    with cache.building(key):
        body = cache.get(key, version)  # built meanwhile by the request this one waited on
        if body is None:
            ended = job.status in JobStatus.TERMINAL
            body = _build_page(session, job_id, after, limit, max_points, job.monitor, ended)
            cache.put(key, version, body, final=job.status in JobStatus.TERMINAL)
    return body


def _build_page(
    session: Session,
    job_id: str,
    after: int,
    limit: int,
    max_points: int | None,
    monitor: str,
    ended: bool,
) -> bytes:
    """One query, records built as plain dicts, JSON written once.

    ``ended``: the job's status, read before its metrics, is final (so they are all there).
    """
    # Epochs are contiguous from 1, so the page is a range; one epoch more tells whether
    # there is a next page. The bound stays within the epoch column's range (int4).
    rows = session.execute(
        select(Metric.epoch, Metric.name, Metric.value)
        .where(
            Metric.job_id == job_id,
            Metric.step == 0,
            Metric.epoch > after,
            Metric.epoch <= min(after + limit + 1, MAX_EPOCH),
        )
        .order_by(Metric.epoch, Metric.name)
    )
    records = _records(rows)
    more = bool(records) and records[-1][0] > after + limit
    if more:
        records.pop()
    if max_points is not None:
        records = downsample(records, max_points, key_metrics(records, monitor))
    items = [{"epoch": epoch, "metrics": metrics} for epoch, metrics in records]
    # The cursor is the last epoch returned (downsampling always keeps the last one).
    page = {
        "items": items,
        "next": records[-1][0] if records else after,
        "complete": ended and not more,
    }
    return json.dumps(page, separators=(",", ":"), allow_nan=False).encode()


def epoch_records(session: Session, job_id: str, *, after: int, through: int) -> list[Record]:
    """The per-epoch records of epochs ``after < epoch <= through``, in epoch order.

    For readers that page by the job's own progress (the event stream, the plot): pass the
    job's ``epoch`` as ``through``, read in the same session before, so that every epoch
    returned was committed together with the progress that named it.
    """
    if through <= after:
        return []
    rows = session.execute(
        select(Metric.epoch, Metric.name, Metric.value)
        .where(
            Metric.job_id == job_id,
            Metric.step == 0,
            Metric.epoch > after,
            Metric.epoch <= through,
        )
        .order_by(Metric.epoch, Metric.name)
    )
    return _records(rows)


def _key(job_id: str, owner: str, after: int, limit: int, max_points: int | None) -> Hashable:
    return (owner, job_id, after, limit, max_points)


def _records(rows: Iterable[Any]) -> list[Record]:
    """(epoch, name, value) rows in epoch order → one (epoch, {name: value}) per epoch."""
    records: list[Record] = []
    current = None
    metrics: dict[str, float | None] = {}
    isfinite = math.isfinite
    for epoch, name, value in rows:
        if epoch != current:
            current, metrics = epoch, {}
            records.append((epoch, metrics))
        # JSON has no NaN or infinity: a diverged loss is served as null.
        metrics[name] = value if value is None or isfinite(value) else None
    return records

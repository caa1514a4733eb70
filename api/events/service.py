"""A job's progress as a stream of server-sent events, read by polling the database.

Two kinds of event, in the order they happened:

- ``status``: the job's status changed (``data`` is the whole job, as ``GET /v1/jobs/{id}``
  answers it). A fresh stream of a queued or running job opens with one.
- ``epoch``: an epoch finished (``data`` is its record, as ``/metrics`` serves it).

Each event's id is ``<epoch>:<status>``: the last epoch and the status the client holds once
it has this event. A client that reconnects with it as ``Last-Event-ID`` gets every later
epoch and, if the status has moved on since, one status event with the current job; nothing
is sent twice and no epoch is skipped. ``?after=N`` starts after epoch N with the status
unknown (so the first event is the current status).

A job that ends gets its last epochs, then its final status event, then the stream closes.
Reconnecting to a finished job with nothing left to send answers ``204 No Content``, which
tells a browser's ``EventSource`` to stop reconnecting.

The stream polls the database every ``POLL_SECONDS`` in the threadpool, each time in a short
read-only session of its own, and sends a comment line as a heartbeat when it has been
quiet for ``HEARTBEAT_SECONDS`` (so proxies keep the connection open).
"""

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy import select

from api.errors import InvalidParameter, NotFound
from api.jobs.schemas import JobPublic
from api.metrics.downsample import Record
from api.metrics.service import MAX_EPOCH, epoch_records
from store.db import session_scope
from store.models import Job, JobStatus

POLL_SECONDS = 0.25
HEARTBEAT_SECONDS = 15.0
# Epochs read per poll: a stream that joins a long job late catches up in a few reads.
BATCH_EPOCHS = 500
# How long a browser waits before reconnecting, in milliseconds (sent with the first event).
RETRY_MS = 2000
# An event id: ASCII digits only (str.isdigit() also takes "²", which int() refuses).
EVENT_ID = re.compile(r"([0-9]{1,10}):(?P<status>[a-z]*)", re.ASCII)


@dataclass
class Cursor:
    """What the client holds: the last epoch it got, and the status it last saw."""

    epoch: int = 0
    status: str | None = None

    @property
    def event_id(self) -> str:
        return f"{self.epoch}:{self.status or ''}"


def parse_cursor(last_event_id: str | None, after: int | None) -> Cursor:
    """The cursor from a ``Last-Event-ID`` header (preferred) or an ``after`` query.

    A header that is not an id of this stream (``<epoch>:<status>``, the epoch in ASCII
    digits within the epoch column's range) raises InvalidParameter (422).
    """
    if last_event_id:
        match = EVENT_ID.fullmatch(last_event_id.strip())
        status = match["status"] if match else None
        if match and (status in JobStatus.ALL or status == "") and int(match[1]) <= MAX_EPOCH:
            return Cursor(int(match[1]), status or None)
        raise InvalidParameter.one(
            ("header", "last-event-id"), "must be an event id of this stream, <epoch>:<status>",
            last_event_id,
        )  # fmt: skip
    return Cursor(after or 0, None)


@dataclass
class Poll:
    """One read of the job: its status and epoch, epochs the client lacks, and the whole
    job when its status is not the one the client saw."""

    status: str
    epoch: int
    records: list[Record]
    job: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        return self.status in JobStatus.TERMINAL


def poll(job_id: str, owner: str, cursor: Cursor, limit: int = BATCH_EPOCHS) -> Poll:
    """Blocking: run it in the threadpool. Raises NotFound for a job this owner lacks."""
    with session_scope() as session:
        row = session.execute(
            select(Job.status, Job.epoch).where(Job.id == job_id, Job.owner == owner)
        ).one_or_none()
        if row is None:
            raise NotFound(f"job {job_id} not found")
        status, epoch = row.status, row.epoch
        job = None
        if status != cursor.status:
            full = session.scalars(select(Job).where(Job.id == job_id)).one()
            status, epoch = full.status, full.epoch  # this read is the later one
            job = JobPublic.from_row(full).model_dump(mode="json")
        # Epochs up to the one the job row names were committed with it: none is missed.
        records = epoch_records(
            session, job_id, after=cursor.epoch, through=min(epoch, cursor.epoch + limit)
        )
    return Poll(status, epoch, records, job)


def nothing_to_send(first: Poll, cursor: Cursor) -> bool:
    """The job has ended and the client already holds all of it."""
    return first.finished and first.job is None and cursor.epoch >= first.epoch


def format_event(event: str, event_id: str, data: Any) -> str:
    body = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"id: {event_id}\nevent: {event}\ndata: {body}\n\n"


def events(first: Poll, cursor: Cursor) -> tuple[list[str], bool]:
    """The events one poll yields, advancing ``cursor``; and whether the stream is done.

    A status change to a live status is sent before the new epochs (a job starts running,
    then trains); a final status only once every epoch before it has been sent.
    """
    out: list[str] = []
    if first.job is not None and not first.finished:
        cursor.status = first.status
        out.append(format_event("status", cursor.event_id, first.job))
    for epoch, metrics in first.records:
        cursor.epoch = epoch
        out.append(format_event("epoch", cursor.event_id, {"epoch": epoch, "metrics": metrics}))
    done = first.finished and cursor.epoch >= first.epoch
    if done and first.job is not None:
        cursor.status = first.status
        out.append(format_event("status", cursor.event_id, first.job))
    return out, done


async def stream(
    job_id: str,
    owner: str,
    cursor: Cursor,
    first: Poll,
    *,
    poll_seconds: float = POLL_SECONDS,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
) -> AsyncIterator[str]:
    """The event stream: ends after the job's final status event, or when the job is gone."""
    current = first
    quiet_since = time.monotonic()
    retry = f"retry: {RETRY_MS}\n"  # sent with the first event, not as a block of its own
    while True:
        out, done = events(current, cursor)
        if out:
            yield retry + "".join(out)
            retry = ""
            quiet_since = time.monotonic()
        if done:
            return
        if time.monotonic() - quiet_since >= heartbeat_seconds:
            yield ": keepalive\n\n"
            quiet_since = time.monotonic()
        if len(current.records) < BATCH_EPOCHS:  # caught up: wait for news
            await anyio.sleep(poll_seconds)
        try:
            current = await anyio.to_thread.run_sync(poll, job_id, owner, cursor)
        except NotFound:
            return  # deleted meanwhile; a reconnect answers 404

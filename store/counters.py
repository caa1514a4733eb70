"""Monotonic counters kept in the database (the ``counters`` table), counted as things
happen rather than rebuilt from history at each scrape.

A process adds to its own rows (``source``: its worker's name) in the same transaction as
what it counts, with one upsert, so a rolled-back epoch is not counted and writers of
different sources never wait on one row. A reader sums the rows of a name over all sources:
its cost depends on the number of names and sources, never on the size of the metrics table.
Rows are never decremented or deleted, so a total never goes down (Prometheus reads a
decrease as a counter reset): an epoch redone by a resumed job is counted again.

The epoch duration histogram (``descent_epoch_duration_seconds``) is three names per epoch:

- ``epoch_duration_seconds_bucket:<le>``: epochs that took more than the bound before ``le``
  and at most ``le`` seconds (one bucket each, not cumulative: the reader accumulates them,
  so an epoch updates one bucket row, not every bucket at or above it);
- ``epoch_duration_seconds_count`` and ``epoch_duration_seconds_sum``: every epoch, and their
  seconds (an epoch longer than the last bound is in the count only, as Prometheus's +Inf).
"""

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from store.models import Counter

EPOCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
EPOCH_DURATION = "epoch_duration_seconds"
EPOCH_COUNT = f"{EPOCH_DURATION}_count"
EPOCH_SUM = f"{EPOCH_DURATION}_sum"

_INSERTS: dict[str, Any] = {"postgresql": postgresql_insert, "sqlite": sqlite_insert}


def bucket_name(bound: float) -> str:
    return f"{EPOCH_DURATION}_bucket:{float(bound)!r}"


EPOCH_NAMES = (*(bucket_name(b) for b in EPOCH_BUCKETS), EPOCH_COUNT, EPOCH_SUM)


def add(session: Session, source: str, increments: Mapping[str, float]) -> None:
    """Add each increment to this source's row of its name, in the session's transaction:
    one INSERT ... ON CONFLICT DO UPDATE, executed for each row (its statement is built and
    compiled once: a VALUES list of the rows was compiled anew at each epoch's commit)."""
    if not increments:
        return
    # Rows in name order: two transactions adding to the same rows lock them in one order.
    rows = [{"name": n, "source": source, "value": v} for n, v in sorted(increments.items())]
    session.execute(_upsert(session.get_bind().dialect.name), rows)


_UPSERTS: dict[str, Any] = {}


def _upsert(dialect: str) -> Any:
    if dialect not in _UPSERTS:
        table = Counter.__table__
        stmt = _INSERTS[dialect](table)
        _UPSERTS[dialect] = stmt.on_conflict_do_update(
            index_elements=[table.c.name, table.c.source],
            set_={"value": table.c.value + stmt.excluded.value},
        )
    return _UPSERTS[dialect]


def epoch_increments(seconds: float) -> dict[str, float]:
    """What one epoch of ``seconds`` adds to the epoch duration histogram."""
    increments = {EPOCH_COUNT: 1.0, EPOCH_SUM: seconds}
    bound = next((b for b in EPOCH_BUCKETS if seconds <= b), None)
    if bound is not None:
        increments[bucket_name(bound)] = 1.0
    return increments


def count_epoch(session: Session, source: str, seconds: float) -> None:
    count_epochs(session, source, [seconds])


def count_epochs(session: Session, source: str, durations: Iterable[float]) -> None:
    """Epochs of these durations (seconds) committed together: one upsert for all."""
    increments: dict[str, float] = {}
    for seconds in durations:
        for name, value in epoch_increments(seconds).items():
            increments[name] = increments.get(name, 0.0) + value
    add(session, source, increments)


def totals(session: Session, names: tuple[str, ...]) -> dict[str, float]:
    """Each name's value summed over every source (0 for a name never counted)."""
    rows = session.execute(
        select(Counter.name, func.sum(Counter.value))
        .where(Counter.name.in_(names))
        .group_by(Counter.name)
    )
    found = dict.fromkeys(names, 0.0)
    found.update({name: float(value or 0.0) for name, value in rows})
    return found


def epoch_histogram(session: Session) -> tuple[list[int], int, float]:
    """(cumulative count per bound of EPOCH_BUCKETS, count, sum) of every counted epoch."""
    found = totals(session, EPOCH_NAMES)
    cumulative, running = [], 0
    for bound in EPOCH_BUCKETS:
        running += int(found[bucket_name(bound)])
        cumulative.append(running)
    return cumulative, int(found[EPOCH_COUNT]), found[EPOCH_SUM]

"""Engines and sessions.

Every wait on the database is bounded (``database_*`` settings), so that a database that is
down, overloaded or hung fails a request with 503 within seconds instead of holding it, its
thread and its connection:

- PostgreSQL: the server cancels a statement after ``database_timeout`` (lock waits
  included); a server that answers nothing at all (its processes stopped, its sockets open)
  is given up a second later on the client side and the connection is dropped from the pool;
  ``connect_timeout``, TCP keepalives, a ping before a pooled connection is reused, and a
  bounded wait for a connection from the pool.
- SQLite (the embedded default) is opened in WAL mode, so the API can read while the worker
  writes, with a busy timeout of ``database_timeout``; writers keep their transactions short.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from descent.settings import get_settings

# A connection that has been idle this long is probed; this many unanswered probes, this
# far apart, and the kernel closes it (a database host that vanished, a network cut).
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10}
KEEPALIVES_COUNT = 3
# How much longer than its statement timeout a statement is waited for on the client side.
GRACE_SECONDS = 1.0


def make_engine(url: str, *, pooled: bool = True, bounded: bool = True) -> Engine:
    """pooled=False keeps no connection open between uses (for a process that forks);
    bounded=False sets no statement timeout on PostgreSQL (migrations, which may run long)."""
    settings = get_settings()
    parsed = make_url(url)
    pool_args: dict[str, Any] = (
        {
            "pool_pre_ping": True,
            "pool_size": settings.database_pool_size,
            "max_overflow": settings.database_max_overflow,
            "pool_timeout": settings.database_pool_timeout,
        }
        if pooled
        else {"poolclass": NullPool}
    )
    if parsed.get_backend_name() == "postgresql":
        return _postgres_engine(url, pool_args, bounded=bounded)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, **pool_args)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    timeout = settings.database_timeout
    pool_args.pop("pool_pre_ping", None)  # a file needs no ping
    engine = create_engine(
        url, connect_args={"timeout": timeout, "check_same_thread": False}, **pool_args
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def _postgres_engine(url: str, pool_args: dict[str, Any], *, bounded: bool) -> Engine:
    settings = get_settings()
    connect_args: dict[str, Any] = {
        "connect_timeout": max(1, round(settings.database_connect_timeout)),
        **KEEPALIVES,
        "keepalives_count": KEEPALIVES_COUNT,
    }
    deadline = None
    if bounded and settings.database_timeout > 0:
        milliseconds = max(1, round(settings.database_timeout * 1000))
        connect_args["options"] = f"-c statement_timeout={milliseconds}"
        deadline = settings.database_timeout + GRACE_SECONDS
    engine = create_engine(url, connect_args=connect_args, **pool_args)
    if deadline is not None and make_url(url).get_driver_name() == "psycopg":

        @event.listens_for(engine, "do_connect")
        def _bounded_connection(_dialect, _record, cargs, cparams):
            from store.pg import BoundedConnection

            connection = BoundedConnection.connect(*cargs, **cparams)
            connection.deadline = deadline
            return connection

    return engine


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().database_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()

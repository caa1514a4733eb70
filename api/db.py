"""The request's database session: one transaction per request, committed once.

Services only ``flush()``. Work that must happen only once the transaction is committed
(sending a job to the broker, so that a worker never sees a job id whose row does not exist
yet) is registered with ``on_commit`` and runs right after the commit, before the response
goes out, so its failure can still change the answer.

The dependency itself is async and does no I/O of its own: making a Session opens nothing
(a connection is taken on its first query, in the handler's thread), and the commit or
rollback of a session that did query runs in the threadpool. So a request costs no thread
hops beyond its handler's, and one that never queries costs none for the session at all.

A request that writes holds its locks (SQLite's write lock, an owner's row lock taken by
``store.users.lock_owner``) until that commit, after hops to the threadpool (FastAPI
validates a sync handler's answer there). Were every threadpool thread taken by requests
waiting for those locks, the holder could never reach its commit, and all would wait for
the database's timeout (503s). So fewer requests that write than the threadpool has threads
run at once (``WRITERS``); the others wait for their turn without holding a thread.
"""

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from store.db import get_sessionmaker

_AFTER_COMMIT = "api.after_commit"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Requests that write at once, per event loop: at most half the threadpool's threads.
WRITERS = 16
_writers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]" = (
    weakref.WeakKeyDictionary()
)


def _writers_semaphore() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    semaphore = _writers.get(loop)
    if semaphore is None:
        threads = anyio.to_thread.current_default_thread_limiter().total_tokens
        semaphore = _writers[loop] = asyncio.Semaphore(max(1, min(WRITERS, int(threads) // 2)))
    return semaphore


def on_commit(session: Session, action: Callable[[], None]) -> None:
    """Run ``action`` after this request's transaction commits (never if it rolls back)."""
    session.info.setdefault(_AFTER_COMMIT, []).append(action)


async def get_session(request: Request) -> AsyncIterator[Session]:
    if request.method in READ_METHODS:
        async with _transaction() as session:
            yield session
    else:
        async with _writers_semaphore(), _transaction() as session:
            yield session


@asynccontextmanager
async def _transaction() -> AsyncIterator[Session]:
    session = get_sessionmaker()()
    try:
        yield session
        if session.in_transaction():
            await run_in_threadpool(session.commit)
    except BaseException:
        if session.in_transaction():
            await run_in_threadpool(session.rollback)
        raise
    finally:
        actions: list[Callable[[], None]] = session.info.pop(_AFTER_COMMIT, [])
        session.close()  # no I/O: the transaction, if any, has ended above
    for action in actions:
        await run_in_threadpool(action)

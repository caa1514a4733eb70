"""The request's database session: one transaction per request, committed once.

Services only ``flush()``. Work that must happen only once the transaction is committed
(sending a job to the broker, so that a worker never sees a job id whose row does not exist
yet) is registered with ``on_commit`` and runs right after the commit, before the response
goes out, so its failure can still change the answer.

The dependency itself is async and does no I/O of its own: making a Session opens nothing
(a connection is taken on its first query, in the handler's thread), and the commit or
rollback of a session that did query runs in the threadpool. So a request costs no thread
hops beyond its handler's, and one that never queries costs none for the session at all.
"""

from collections.abc import AsyncIterator, Callable

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from store.db import get_sessionmaker

_AFTER_COMMIT = "api.after_commit"


def on_commit(session: Session, action: Callable[[], None]) -> None:
    """Run ``action`` after this request's transaction commits (never if it rolls back)."""
    session.info.setdefault(_AFTER_COMMIT, []).append(action)


async def get_session() -> AsyncIterator[Session]:
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

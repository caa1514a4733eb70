"""Whether a queued job's task message reached the broker (``jobs.unsent_since``).

A job is committed as queued first and its message sent after the commit (a worker must
never be sent a job whose row does not exist yet). A process killed between the two would
leave a queued job that no worker is ever sent. So every change that queues a job sets
``unsent_since`` (the job's insert, by the column's default; a re-queue, explicitly), and
its sender clears it in a short transaction of its own once the broker took the message
(``mark_sent``); a worker's claim clears it too. The sweeper (worker/sweeper.py) sends
again each job still queued and unsent ``resend_grace_seconds`` after it was queued.

A message sent twice is harmless: the claim (worker/runner.py) runs the job once, and a
delivery that finds it running or ended does nothing.
"""

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from store.models import Job

log = logging.getLogger(__name__)

Transaction = Callable[[], AbstractContextManager[Session]]


def mark_sent(transaction: Transaction, job_id: str, since: datetime | None) -> bool:
    """Record that the message of the job queued at ``since`` was sent. Whether it was
    recorded: not when the job was claimed, queued again (a new ``since``) or taken over by
    a sweeper's re-send meanwhile, nor when the database failed (the message was sent all
    the same; the sweeper then sends a harmless second one)."""
    if since is None:
        return False
    try:
        with transaction() as session:
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.unsent_since == since)
                .values(unsent_since=None)
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - sent is sent; at worst it is sent twice
        log.warning("job %s: sent, but could not record it: %s", job_id, exc)
        return False

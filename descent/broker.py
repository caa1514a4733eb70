"""The embedded broker: kombu's SQLAlchemy transport on its own SQLite file.

kombu hands every transport option to ``create_engine``, so its own ``polling_interval``
cannot be set through the options; this subclass builds the engine itself (WAL mode and a
busy timeout, as for the service's database, since the API and the worker both write).

kombu marks a message's row invisible when it delivers it and never reads that row again
(a message given back is written anew), but keeps it forever. Each delivery here deletes
the row instead, in the statement that takes it, so the table holds only the messages
still waiting.

A consumer polls its queues every ``polling_interval`` seconds, but a message sent by its
own process (a study's next trial, sent by the worker's top-up thread) ends the wait at
once: the worker takes it without waiting for its next poll.
"""

import threading
import time
from json import dumps, loads
from queue import Empty
from typing import Any

from kombu.transport import sqlalchemy as kombu_sqla
from kombu.utils.encoding import bytes_to_str
from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import OperationalError

from store.db import make_engine

# Set each time this process sends a message; a consumer waiting between polls wakes.
_sent = threading.Event()


class Channel(kombu_sqla.Channel):
    def _engine_from_config(self) -> Engine:
        return make_engine(self.connection.client.hostname)

    # kombu's own base classes disagree on the second parameter's name (message, payload).
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """kombu's, by one plain INSERT into the queue whose id this channel has read (a
        study's worker sends a trial at each trial's end: no queue lookup, no unit of work)."""
        table = self.message_cls.__table__
        try:
            self.session.execute(
                table.insert().values(
                    queue_id=self._queue_id(queue),
                    payload=dumps(payload),
                    visible=True,
                    version=1,  # no timestamp, as kombu's: the messages go in id order
                )
            )
            self.session.commit()
        except OperationalError:
            # As kombu: the publish fails (and may be retried) rather than report a
            # message that was never stored.
            self.session.rollback()
            raise
        _sent.set()

    def _queue_id(self, queue: str) -> int:
        """The queue's row id, read once per channel: kombu never deletes a queue's row (an
        idle worker polls two queues ten times a second)."""
        ids: dict[str, int] = self.__dict__.setdefault("_queue_ids", {})
        if queue not in ids:
            ids[queue] = queue_id = self._get_or_create(queue).id
            table = self.message_cls.__table__
            # Rows an earlier version left invisible, once.
            self.session.execute(
                delete(table).where(table.c.queue_id == queue_id, table.c.visible.is_(False))
            )
            self.session.commit()
        return ids[queue]

    def _take_oldest(self, queue_id: int) -> Any:
        """One statement, built once per queue: delete the queue's oldest waiting message
        and return its payload (atomic on its own: no transaction around a read and a
        write, and no ORM query built at each poll)."""
        statements: dict[int, Any] = self.__dict__.setdefault("_take_statements", {})
        if queue_id not in statements:
            table = self.message_cls.__table__
            oldest = (
                select(table.c.id)
                .where(table.c.queue_id == queue_id, table.c.visible.is_(True))
                .order_by(table.c.timestamp, table.c.id)  # kombu's sent_at
                .limit(1)
                .scalar_subquery()
            )
            statements[queue_id] = (
                delete(table).where(table.c.id == oldest).returning(table.c.payload)
            )
        return statements[queue_id]

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        """kombu's delivery of the oldest waiting message, which deletes its row instead of
        marking it invisible."""
        queue_id = self._queue_id(queue)
        session = self.session
        try:
            payload = session.execute(self._take_oldest(queue_id)).scalar_one_or_none()
        finally:
            session.commit()
        if payload is None:
            raise Empty()
        return loads(bytes_to_str(payload))


class Transport(kombu_sqla.Transport):
    Channel = Channel

    def drain_events(self, connection: Any, timeout: float | None = None, **_: Any) -> None:
        """kombu's loop (poll the queues, wait ``polling_interval`` between two polls), but
        the wait ends as soon as this process sends a message."""
        started = time.monotonic()
        interval = self.polling_interval
        if timeout and interval and interval > timeout:
            interval = timeout
        while True:
            _sent.clear()  # before the poll: a message sent after it ends the wait below
            assert self.cycle is not None  # made with the transport's first channel
            try:
                self.cycle.get(self._deliver, timeout=timeout)
            except Empty:
                if timeout is not None and time.monotonic() - started >= timeout:
                    raise TimeoutError() from None  # socket.timeout, as kombu
                if interval is not None:
                    _sent.wait(interval)
            else:
                return

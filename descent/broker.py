"""The embedded broker: kombu's SQLAlchemy transport on its own SQLite file.

kombu hands every transport option to ``create_engine``, so its own ``polling_interval``
cannot be set through the options; this subclass builds the engine itself (WAL mode and a
busy timeout, as for the service's database, since the API and the worker both write).

kombu marks a message's row invisible when it delivers it and never reads that row again
(a message given back is written anew), but keeps it forever. Each delivery here deletes
the row instead, in the transaction that takes it, so the table holds only the messages
still waiting.

A consumer polls its queues every ``polling_interval`` seconds, but a message sent by its
own process (a study's next trial, sent by the worker's top-up thread) ends the wait at
once: the worker takes it without waiting for its next poll.
"""

import threading
import time
from json import loads
from queue import Empty
from typing import Any

from kombu.transport import sqlalchemy as kombu_sqla
from kombu.utils.encoding import bytes_to_str
from sqlalchemy import Engine, or_, text

from store.db import make_engine

# Set each time this process sends a message; a consumer waiting between polls wakes.
_sent = threading.Event()


class Channel(kombu_sqla.Channel):
    def _engine_from_config(self) -> Engine:
        return make_engine(self.connection.client.hostname)

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        super()._put(queue, payload, **kwargs)
        _sent.set()

    def _queue_id(self, queue: str) -> int:
        """The queue's row id, read once per channel: kombu never deletes a queue's row (an
        idle worker polls two queues ten times a second)."""
        ids: dict[str, int] = self.__dict__.setdefault("_queue_ids", {})
        if queue not in ids:
            ids[queue] = self._get_or_create(queue).id
        return ids[queue]

    def _get(self, queue: str) -> Any:
        """kombu's delivery of the oldest waiting message, which deletes its row (and any
        row an earlier version left invisible) instead of marking it invisible."""
        message_cls = self.message_cls
        queue_id = self._queue_id(queue)
        session = self.session
        if session.bind.name == "sqlite":
            session.execute(text("BEGIN IMMEDIATE TRANSACTION"))
        try:
            message = (
                session.query(message_cls)
                .with_for_update()
                .filter(message_cls.queue_id == queue_id, message_cls.visible.is_(True))
                .order_by(message_cls.sent_at, message_cls.id)
                .first()
            )
            if message is None:
                raise Empty()
            payload = loads(bytes_to_str(message.payload))
            session.query(message_cls).filter(
                or_(message_cls.id == message.id, message_cls.visible.is_(False))
            ).delete(synchronize_session=False)
            return payload
        finally:
            session.commit()


class Transport(kombu_sqla.Transport):
    Channel = Channel

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """kombu's loop (poll the queues, wait ``polling_interval`` between two polls), but
        the wait ends as soon as this process sends a message."""
        started = time.monotonic()
        interval = self.polling_interval
        if timeout and interval and interval > timeout:
            interval = timeout
        while True:
            _sent.clear()  # before the poll: a message sent after it ends the wait below
            try:
                self.cycle.get(self._deliver, timeout=timeout)
            except Empty:
                if timeout is not None and time.monotonic() - started >= timeout:
                    raise TimeoutError() from None  # socket.timeout, as kombu
                if interval is not None:
                    _sent.wait(interval)
            else:
                return

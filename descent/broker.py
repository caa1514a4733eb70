"""The embedded broker: kombu's SQLAlchemy transport on its own SQLite file.

kombu hands every transport option to ``create_engine``, so its own ``polling_interval``
cannot be set through the options; this subclass builds the engine itself (WAL mode and a
busy timeout, as for the service's database, since the API and the worker both write).

kombu marks a message's row invisible when it delivers it and never reads that row again
(a message given back is written anew), but keeps it forever. Each delivery therefore
deletes the invisible rows, so the table holds only the messages still waiting.
"""

from typing import Any

from kombu.transport import sqlalchemy as kombu_sqla
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from store.db import make_engine


class Channel(kombu_sqla.Channel):
    def _engine_from_config(self) -> Engine:
        return make_engine(self.connection.client.hostname)

    def _get(self, queue: str) -> Any:
        payload = super()._get(queue)  # raises Empty when there is none
        self._delete_delivered()
        return payload

    def _delete_delivered(self) -> None:
        try:
            delivered = self.session.query(self.message_cls).filter_by(visible=False)
            delivered.delete(synchronize_session=False)
            self.session.commit()
        except OperationalError:
            # Busy: the next delivery deletes them. The message itself was delivered.
            self.session.rollback()


class Transport(kombu_sqla.Transport):
    Channel = Channel

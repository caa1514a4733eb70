"""The embedded broker: kombu's SQLAlchemy transport on its own SQLite file.

kombu hands every transport option to ``create_engine``, so its own ``polling_interval``
cannot be set through the options; this subclass builds the engine itself (WAL mode and a
busy timeout, as for the service's database, since the API and the worker both write).
"""

from kombu.transport import sqlalchemy as kombu_sqla
from sqlalchemy import Engine

from store.db import make_engine


class Channel(kombu_sqla.Channel):
    def _engine_from_config(self) -> Engine:
        return make_engine(self.connection.client.hostname)


class Transport(kombu_sqla.Transport):
    Channel = Channel

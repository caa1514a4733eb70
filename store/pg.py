"""A psycopg connection that gives up on a server that answers nothing.

PostgreSQL's ``statement_timeout`` ends a statement that runs too long, but only a server
that runs can enforce it: one whose processes are stopped (or a network path that swallows
packets while the sockets stay open) answers nothing, and TCP keepalives are answered by
the host's kernel all the same. Every wait of this connection on its server therefore has a
deadline; past it the connection is closed (its state is unknown), so the pool drops it and
the request fails with an ``OperationalError`` (503) instead of hanging.
"""

from typing import Any

import psycopg
from psycopg.errors import _WaitTimeout  # raised by psycopg's own wait when its timeout expires


class BoundedConnection(psycopg.Connection[Any]):
    deadline: float | None = None  # seconds; set right after connecting

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        try:
            return super().wait(
                gen, interval=interval, timeout=self.deadline if timeout is None else timeout
            )
        except _WaitTimeout:
            if timeout is not None:
                raise  # a caller's own timeout (notifies): the caller handles it
            self.pgconn.finish()
            raise psycopg.OperationalError(
                f"the database did not answer within {self.deadline:g} seconds"
            ) from None

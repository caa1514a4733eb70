"""Run the Alembic migrations (the only way the schema changes).

The migration scripts are the ``migrations`` package, installed with the others, so
``descent migrate`` works from a built wheel as from a checkout; ``alembic.ini`` at the
repository root is only for the ``alembic`` command (writing new revisions).
"""

import logging
import time
from importlib.resources import files

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)

# How long `descent migrate` waits for a database that does not answer yet (a PostgreSQL
# container on its first start), in seconds.
DATABASE_WAIT_SECONDS = 120.0


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("migrations")))
    config.set_main_option("path_separator", "os")
    return config


def worth_waiting(error: OperationalError) -> bool:
    """A server not listening yet (refused, unreachable) or starting up is worth another try;
    one that answers no (a wrong password, a missing database) is not: it fails at once."""
    message = str(error.orig)
    if "FATAL" not in message:
        return True
    return "starting up" in message or "not yet accepting connections" in message


def wait_for_database(url: str, timeout: float = DATABASE_WAIT_SECONDS) -> None:
    """Return once the database accepts a connection; raise its error after ``timeout``."""
    from store.db import make_engine

    if make_url(url).get_backend_name() == "sqlite":
        return  # a file: nothing to wait for
    engine = make_engine(url, pooled=False)
    deadline = time.monotonic() + timeout
    delay = 0.25
    try:
        while True:
            try:
                with engine.connect():
                    return
            except OperationalError as exc:
                if not worth_waiting(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning(
                    "descent: waiting for the database at %s (%s); giving up in %.0f s",
                    make_url(url).render_as_string(hide_password=True),
                    str(exc.orig).strip().splitlines()[0],
                    deadline - time.monotonic(),
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
    finally:
        engine.dispose()


def upgrade(
    connection: Connection | None = None,
    revision: str = "head",
    wait_seconds: float = DATABASE_WAIT_SECONDS,
) -> None:
    config = alembic_config()
    if connection is not None:
        config.attributes["connection"] = connection
    else:
        from descent.settings import get_settings

        wait_for_database(get_settings().database_url, wait_seconds)
    command.upgrade(config, revision)

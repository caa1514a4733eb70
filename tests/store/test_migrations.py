from sqlalchemy import inspect

from descent.settings import Settings
from store.db import get_engine


def test_migrations_create_the_schema(db_env: Settings) -> None:
    tables = set(inspect(get_engine()).get_table_names())
    assert {"jobs", "metrics", "checkpoints", "alembic_version"} <= tables


def test_sqlite_runs_in_wal_mode(sqlite_env: Settings) -> None:
    with get_engine().connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        # A writer waits for the write lock at most database_timeout (10 s by default).
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from descent.migrate import alembic_config, upgrade
from descent.settings import Settings
from store.db import get_engine
from store.models import Base


def schema_differences() -> list[object]:
    """What Alembic's autogenerate would change to make the database match the models."""
    with get_engine().connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_the_migrated_schema_is_the_models_schema(db_env: Settings) -> None:
    assert set(inspect(get_engine()).get_table_names()) == {
        *Base.metadata.tables,
        "alembic_version",
    }
    assert schema_differences() == []


def test_migrations_go_down_to_nothing_and_back_up(db_env: Settings) -> None:
    config = alembic_config()
    with get_engine().begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert set(inspect(get_engine()).get_table_names()) == {"alembic_version"}
    upgrade()
    assert schema_differences() == []


def test_sqlite_runs_in_wal_mode(sqlite_env: Settings) -> None:
    with get_engine().connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        # A writer waits for the write lock at most database_timeout (10 s by default).
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000

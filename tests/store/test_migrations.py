from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import column, inspect, select, table

from descent.migrate import alembic_config, upgrade
from descent.settings import Settings
from store.db import get_engine
from store.models import Base, Job, utcnow


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


def test_jobs_queued_before_0007_are_left_for_the_sweeper_to_send_again(
    db_env: Settings,
) -> None:
    """A job queued before 0007 may be one whose sender died before sending it: the
    upgrade marks each queued job unsent (the sweeper sends it once more), no other."""
    config = alembic_config()
    with get_engine().begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0006")
    row = {"spec": "{}", "spec_hash": "", "queue": "cpu", "monitor": "val_loss", "mode": "min",
           "owner": "local", "created_at": utcnow(), "epoch": 0, "attempt": 0,
           "cancel_requested": False}  # fmt: skip
    jobs = table("jobs", column("id"), column("status"), *(column(name) for name in row))
    with get_engine().begin() as conn:
        conn.execute(
            jobs.insert(),
            [{**row, "id": status, "status": status} for status in ("queued", "running", "done")],
        )
    upgrade()
    with get_engine().connect() as conn:
        unsent = dict(conn.execute(select(Job.id, Job.unsent_since)).all())
    assert sorted(job for job, since in unsent.items() if since is not None) == ["queued"]
    assert len(unsent) == 3

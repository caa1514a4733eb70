"""Shared fixtures: a fresh database per test run (SQLite in a temporary folder, or its own
PostgreSQL database), its own Redis key space, both cleaned up afterwards.

PostgreSQL and Redis tests skip with the reason where those servers are not running, and
fail instead under CI=true, where they must be there.
"""

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# One torch (OpenMP) thread per process, in this process and every service, worker and rank
# the tests start (they inherit the environment), unless OMP_NUM_THREADS says otherwise. The
# tests run several torch processes at once on a few cores: at torch's default (a thread per
# core each) their threads spin waiting for each other, and a small MLP's epoch took 20 times
# longer on 2 busy cores. Results compared bit for bit are computed at the same thread count.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported before this file: the variable came too late for it
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from descent.settings import Settings, get_settings  # noqa: E402
from tests.databases import throwaway_postgres, throwaway_redis_prefix  # noqa: E402

ON_CI = os.environ.get("CI") == "true"
PG_ADMIN_URL = os.environ.get(
    "DESCENT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_TEST_URL = os.environ.get("DESCENT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unavailable(reason: str) -> None:
    """Skip where a server is missing, but fail on CI, where it must be there."""
    if ON_CI:
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


def reset_caches() -> None:
    """Forget cached settings, engines and sessions, so a changed environment takes effect."""
    from store import db

    if db.get_engine.cache_info().currsize:
        db.get_engine().dispose()
    db.get_engine.cache_clear()
    db.get_sessionmaker.cache_clear()
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def every_due_checkpoint_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process each checkpoint that falls due is written, as when the writer keeps
    up (worker/writer.py ``coalesce`` skips one superseded while it waits): tests that check
    which checkpoints exist, or resume from one, then hold on a busy machine. The skipping
    is tested on its own (tests/worker/test_writer.py); the processes the tests start skip
    as production does."""
    from tests.worker.builders import write_every_due
    from worker import writer

    monkeypatch.setattr(writer, "coalesce", write_every_due)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of its own for this test run, dropped at the end."""
    with postgres_database() as url:
        yield url


@contextmanager
def postgres_database() -> Iterator[str]:
    """Make a PostgreSQL database, yield its URL, drop it (skips where there is no server)."""
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL)
    try:
        with admin.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "not here"
        unavailable(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc.__class__.__name__}")
    finally:
        admin.dispose()
    with throwaway_postgres(PG_ADMIN_URL, "descent_test") as url:
        yield url


@pytest.fixture(scope="session")
def redis_broker() -> Iterator[tuple[str, str]]:
    """(Redis URL, key prefix): this run's own key space, deleted at the end."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        unavailable(f"Redis is not reachable at {REDIS_TEST_URL}: {exc.__class__.__name__}")
    finally:
        client.close()
    with throwaway_redis_prefix(REDIS_TEST_URL, "descent-test") as prefix:
        yield REDIS_TEST_URL, prefix


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Settings]]:
    """Point the service at the given environment: configure(DESCENT_DATA_DIR=...)."""

    def apply(**env: str) -> Settings:
        for key in ("DATABASE_URL", "REDIS_URL", "DESCENT_DATABASE_URL", "DESCENT_BROKER_URL"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        reset_caches()
        return get_settings()

    yield apply
    reset_caches()


def migrated(settings: Settings) -> Settings:
    from descent.migrate import upgrade

    upgrade()
    return settings


@pytest.fixture
def sqlite_env(configure: Callable[..., Settings], tmp_path: Path) -> Settings:
    """The embedded default in a temporary data folder, migrated."""
    return migrated(configure(DESCENT_DATA_DIR=str(tmp_path / "data")))


@pytest.fixture
def postgres_env(
    configure: Callable[..., Settings], tmp_path: Path, postgres_url: str
) -> Iterator[Settings]:
    """This run's PostgreSQL database, migrated, emptied after each test."""
    settings = migrated(
        configure(DESCENT_DATA_DIR=str(tmp_path / "data"), DATABASE_URL=postgres_url)
    )
    yield settings
    from sqlalchemy import text

    from store.db import get_engine

    with get_engine().begin() as conn:
        conn.execute(
            text(
                "TRUNCATE studies, jobs, counters, metrics, checkpoints, uploads, api_tokens,"
                " users CASCADE"
            )
        )


@pytest.fixture(params=["sqlite", "postgres"])
def db_env(request: pytest.FixtureRequest) -> Settings:
    """Both databases the service supports, one after the other."""
    return request.getfixturevalue(f"{request.param}_env")

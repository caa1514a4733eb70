from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from descent.settings import Settings
from tests.api.builders import bearer, make_user


@pytest.fixture
def client(db_env: Settings) -> Iterator[TestClient]:
    """The API over a fresh database (SQLite, then PostgreSQL) and the embedded broker,
    signed in as the user ``local`` (the owner the builders give their rows)."""
    from api.main import create_app

    with TestClient(create_app(db_env), headers=bearer(make_user())) as client:
        yield client


@pytest.fixture
def sqlite_client(sqlite_env: Settings) -> Iterator[TestClient]:
    """The API over SQLite only, for tests that are about HTTP rather than the database."""
    from api.main import create_app

    with TestClient(create_app(sqlite_env), headers=bearer(make_user())) as client:
        yield client

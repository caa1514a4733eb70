"""End-to-end fixtures: the service in both ways to run it, once per test session.

- ``embedded``: ``python -m descent serve`` — SQLite, the SQLAlchemy broker transport and one
  worker process, in a temporary data folder.
- ``redis``: PostgreSQL + Redis, in this run's own database and Redis key space.

A failing test's report ends with the log tails of the services it used (its API's and its
workers'), or of every running one.
"""

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import postgres_database
from tests.e2e.service import LIVE, Service, running, start_embedded, start_production
from tests.timing import scaled


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """pytest-timeout's limit (``timeout`` in pyproject.toml) scales for these tests, as every
    wait in them does."""
    base = float(config.getini("timeout") or 0)
    here = Path(__file__).parent
    for item in items:
        if base and here in item.path.parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(scaled(base)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[Any]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    services = [v for v in funcargs.values() if isinstance(v, Service)] or list(LIVE)
    for service in services:
        report.sections.append((f"service logs ({service.url}, {service.logs})", service.tail()))


@pytest.fixture(scope="session")
def embedded_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    yield from running(start_embedded(tmp_path_factory.mktemp("embedded")))


@pytest.fixture(scope="session")
def redis_service(
    tmp_path_factory: pytest.TempPathFactory, redis_broker: tuple[str, str]
) -> Iterator[Service]:
    redis_url, prefix = redis_broker
    root = tmp_path_factory.mktemp("redis")
    # A database of its own: its worker's sweeper must never take jobs other tests made.
    with postgres_database() as database_url:
        yield from running(start_production(root, database_url, redis_url, prefix))


@pytest.fixture(params=["embedded", "redis"])
def service(request: pytest.FixtureRequest) -> Service:
    """The same tests against both ways to run the service."""
    return request.getfixturevalue(f"{request.param}_service")

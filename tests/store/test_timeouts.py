"""A hung PostgreSQL (its processes stopped, its sockets open) fails requests with 503 within
a bound, instead of holding them: the client gives up on a server that answers nothing,
drops the connection, and the service recovers once the server answers again.

The hang is made without touching the shared server: the service reaches it through a TCP
proxy that can stop passing bytes while keeping every socket open."""

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from descent.settings import Settings
from store.db import get_engine
from tests.api.builders import bearer, make_user, spec
from tests.api.server import serve
from tests.tcp_proxy import TcpProxy
from tests.timing import scaled


@pytest.fixture
def hung_postgres(
    postgres_env: Settings, configure: Callable[..., Settings], tmp_path: Path
) -> Iterator[tuple[Settings, TcpProxy]]:
    """The service's database (migrated) behind a freezable proxy, with small timeouts."""
    real = make_url(postgres_env.database_url)
    proxy = TcpProxy((real.host or "127.0.0.1", real.port or 5432))
    proxied = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    env = {"DESCENT_DATA_DIR": str(tmp_path / "data")}
    try:
        yield (
            configure(
                **env,
                DATABASE_URL=proxied,
                DESCENT_DATABASE_TIMEOUT="1",
                DESCENT_DATABASE_CONNECT_TIMEOUT="2",
                DESCENT_DATABASE_POOL_TIMEOUT="1",
                DESCENT_TOKEN_CACHE_SECONDS="600",
            ),
            proxy,
        )
    finally:
        proxy.thaw()
        get_engine().dispose()
        configure(**env, DATABASE_URL=postgres_env.database_url)  # for the fixture's cleanup
        proxy.close()


def bound(settings: Settings) -> float:
    """A request's worst case: waiting for a pooled connection, its ping given up, a new
    connection given up, then a statement given up (plus the machine's slowness)."""
    statement = settings.database_timeout + 1
    return scaled(settings.database_pool_timeout + 2 * statement + 2 + 1)


def test_a_hung_database_fails_requests_with_503_within_a_bound(
    hung_postgres: tuple[Settings, TcpProxy],
) -> None:
    settings, proxy = hung_postgres
    token = make_user()
    limit = bound(settings)
    with (
        serve(settings) as url,
        httpx.Client(base_url=url, headers=bearer(token), timeout=2 * limit) as client,
    ):
        assert client.get("/v1/jobs").status_code == 200  # a pooled connection to reuse
        proxy.freeze()
        for method, path, body in [
            ("GET", "/v1/jobs", None),
            ("POST", "/v1/jobs", spec()),
            ("GET", "/v1/jobs", None),
        ]:
            started = time.monotonic()
            response = client.request(method, path, json=body)
            seconds = time.monotonic() - started
            print(f"{method} {path} on a hung database: {response.status_code} in {seconds:.1f} s")  # noqa: T201
            assert response.status_code == 503, response.text
            assert seconds < limit, (method, seconds, limit)
        proxy.thaw()
        # The connections given up were dropped; new ones serve the next requests.
        assert client.post("/v1/jobs", json=spec()).status_code == 201
        assert len(client.get("/v1/jobs").json()["items"]) == 1


def test_a_statement_on_a_hung_database_is_given_up(
    hung_postgres: tuple[Settings, TcpProxy],
) -> None:
    settings, proxy = hung_postgres
    limit = scaled(settings.database_timeout + 2)
    outcome: list[BaseException | None] = []

    def statement() -> None:
        try:
            conn.execute(text("SELECT 1"))
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome.append(exc)

    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))
        proxy.freeze()
        # In a thread, so that a statement that hangs fails the test instead of hanging it.
        waiting = threading.Thread(target=statement, daemon=True)
        waiting.start()
        waiting.join(timeout=2 * limit)
        proxy.thaw()
        waiting.join()
        assert isinstance(outcome[0], OperationalError), outcome
        assert "did not answer within 2 seconds" in str(outcome[0])
        assert conn.invalidated

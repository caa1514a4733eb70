"""The dashboard in headless Chromium against the API served by uvicorn (jobs written straight
into the store, no worker): the token's way in, a failed job's page, the metrics cursor, the
learning-rate axis, and an access log that never holds a token."""

import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from descent.settings import Settings
from store.models import JobStatus
from tests.api.builders import add_epochs, make_job, make_user
from tests.conftest import unavailable
from tests.e2e.chromium import Browser, find_chromium
from tests.timing import scaled, wait_for


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def access_log() -> Iterator[Collect]:
    """uvicorn's access log lines, as its handlers get them (after the logger's filters)."""
    logger = logging.getLogger("uvicorn.access")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def server(sqlite_env: Settings, access_log: Collect) -> Iterator[str]:
    from api.main import create_app

    # log_config=None: uvicorn leaves logging as it is, so the fixture above sees the lines.
    config = uvicorn.Config(
        create_app(sqlite_env), host="127.0.0.1", port=0, log_config=None, access_log=True
    )
    app_server = uvicorn.Server(config)
    thread = threading.Thread(target=app_server.run, daemon=True)
    thread.start()
    wait_for("the server to start", lambda: app_server.started, 30)
    host, port = app_server.servers[0].sockets[0].getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        app_server.should_exit = True
        thread.join(timeout=scaled(30))


@pytest.fixture
def browser() -> Iterator[Browser]:
    binary = find_chromium()
    if binary is None:
        unavailable("chromium is not installed (apt-get install chromium)")
    assert binary is not None
    opened = Browser(binary)
    try:
        yield opened
    finally:
        opened.close()


def until(browser: Browser, what: str, expression: str) -> Any:
    """Poll a JavaScript expression in the page until it is truthy; its value."""
    return wait_for(what, lambda: browser.evaluate(expression), 30, interval=0.1)


def test_dashboard_login_failed_job_cursor_and_axis(
    server: str, browser: Browser, access_log: Collect
) -> None:
    token = make_user()
    error = "RuntimeError: CUDA out of memory while building the model"
    failed = make_job(
        status=JobStatus.FAILED,
        name="broken",
        error=error,
        stop={"reason": "error", "rule": None, "epoch": 0, "detail": error},
    )
    # 1500 epochs (more than one page of 1000), the learning rate falling from 1.2e-3 to
    # 8e-4: the axis's ticks cross 1e-3.
    done = make_job(status=JobStatus.SUCCEEDED, name="long")
    epochs = 1500
    add_epochs(
        done,
        [
            {"train_loss": 1 / e, "val_loss": 1.1 / e, "lr": 1.2e-3 - 4e-4 * (e - 1) / (epochs - 1)}
            for e in range(1, epochs + 1)
        ],
    )

    # The old way, a token in the query: redirected to the page without it.
    old = httpx.get(f"{server}/jobs/{failed}?token={token}&x=1", follow_redirects=False)
    assert old.status_code == 303 and old.headers["location"] == f"/jobs/{failed}?x=1"

    # The token in the fragment: kept by the page, gone from the address bar.
    browser.open(f"{server}/jobs/{failed}#token={token}")
    until(browser, "the failed job's summary", "!!document.querySelector('#summary .badge')")
    page = browser.evaluate(
        "(() => ({ href: location.href,"
        " stored: sessionStorage.getItem('descent.token'),"
        " status: document.querySelector('#summary .badge').textContent,"
        " chart: document.getElementById('chart-loss').textContent,"
        " lr: document.getElementById('chart-lr').textContent,"
        " text: document.getElementById('app').textContent }))()"
    )
    assert page["stored"] == token
    assert page["href"] == f"{server}/jobs/{failed}"
    assert page["status"] == "failed"
    assert page["chart"] == page["lr"] == "no epochs: the job failed before its first one"
    assert page["text"].count(error) == 1, page["text"]

    browser.navigate(f"{server}/jobs/{done}")  # the same tab holds the token
    until(
        browser,
        "every epoch drawn",
        f"(document.getElementById('chart-lr') || {{dataset: {{}}}}).dataset.epochs == {epochs}",
    )
    labels = browser.evaluate(
        "[...document.querySelectorAll('#chart-lr .y-tick')].map((t) => t.textContent)"
    )
    assert len(labels) >= 3, labels
    assert all(re.fullmatch(r"\d\.\de-4|\d\.\de-3", label) for label in labels), labels
    assert "1.0e-3" in labels

    wait_for(
        "the second metrics page in the access log",
        lambda: any("/metrics?after=1000" in line for line in access_log.lines),
        10,
    )
    assert any(f"/jobs/{failed}?token=" in line for line in access_log.lines), access_log.lines
    leaked = [line for line in access_log.lines if token in line]
    assert not leaked, leaked

"""Event streams a browser can open: short-lived single-job tickets instead of a token in
the URL, `retry:` sent with the first event, tickets redacted from the access log."""

import logging
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api import tickets
from api.events import service
from descent.settings import Settings
from store.db import session_scope
from store.models import Job, JobStatus
from tests.api.builders import add_epochs, history, make_job
from tests.api.test_dashboard_browser import Collect, access_log, browser, server, until  # noqa: F401
from tests.e2e.chromium import Browser


def ticket_for(client: TestClient, job_id: str) -> str:
    answer = client.post(f"/v1/jobs/{job_id}/events/ticket")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"ticket", "expires_at"}
    return str(body["ticket"])


def test_a_ticket_opens_its_job_stream_only_without_a_token(sqlite_client: TestClient) -> None:
    job_id, other = make_job(status=JobStatus.SUCCEEDED), make_job(status=JobStatus.SUCCEEDED)
    add_epochs(job_id, history(3))
    ticket = ticket_for(sqlite_client, job_id)
    bare = httpx.Client(transport=sqlite_client._transport, base_url=str(sqlite_client.base_url))
    opened = bare.get(f"/v1/jobs/{job_id}/events", params={"ticket": ticket})
    assert opened.status_code == 200
    assert opened.text.count("event: epoch") == 3 and "event: status" in opened.text
    assert bare.get(f"/v1/jobs/{job_id}/events").status_code == 401
    assert bare.get(f"/v1/jobs/{other}/events", params={"ticket": ticket}).status_code == 401
    forged = ticket[:-2] + ("AA" if not ticket.endswith("AA") else "BB")
    refused = bare.get(f"/v1/jobs/{job_id}/events", params={"ticket": forged})
    assert refused.status_code == 401 and "ticket" in refused.json()["detail"]
    for junk in ("", "x", "1.2.3", "9" * 500):
        assert bare.get(f"/v1/jobs/{job_id}/events", params={"ticket": junk}).status_code == 401
    # Another owner's job: no ticket at all.
    assert sqlite_client.post(f"/v1/jobs/{make_job(owner='else')}/events/ticket").status_code == 404


def test_a_ticket_expires_after_a_minute(sqlite_env: Settings) -> None:
    key = tickets.secret(sqlite_env)
    assert (sqlite_env.data_dir / "stream-secret").stat().st_mode & 0o077 == 0
    ticket, expires = tickets.issue(key, "job1", "local", now=1000.0)
    assert expires == 1000 + tickets.TICKET_SECONDS
    assert tickets.owner_of(key, "job1", ticket, now=1059.0) == "local"
    with pytest.raises(Exception, match="expired"):
        tickets.owner_of(key, "job1", ticket, now=1060.0)
    with pytest.raises(Exception, match="expired"):
        tickets.owner_of(b"another key", "job1", ticket, now=1001.0)


def test_retry_comes_with_the_first_event(sqlite_client: TestClient) -> None:
    job_id = make_job(status=JobStatus.SUCCEEDED)
    add_epochs(job_id, history(2))
    text = sqlite_client.get(f"/v1/jobs/{job_id}/events").text
    blocks = [b for b in text.split("\n\n") if b.strip()]
    assert blocks[0].startswith(f"retry: {service.RETRY_MS}\nid: 1:\nevent: epoch\ndata: ")
    assert all("data: " in b for b in blocks)  # no block without data (an empty message)
    assert text.count("retry:") == 1


def test_the_access_log_never_holds_a_ticket() -> None:
    from api.main import _RedactTokens

    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, "%s %s", (
        "GET", "/v1/jobs/abc/events?after=2&ticket=123.bG9jYWw.c2ln&x=1"), None)  # fmt: skip
    _RedactTokens().filter(record)
    assert record.getMessage() == "GET /v1/jobs/abc/events?after=2&ticket=[redacted]&x=1"


@pytest.fixture
def cut_first_stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The first stream ends after its first batch, like a proxy cutting it; records the
    event id each stream resumed from."""
    real, resumed = service.stream, []

    async def stream(job_id, owner, cursor, first, **kw):  # type: ignore[no-untyped-def]
        resumed.append(cursor.event_id)
        async for chunk in real(job_id, owner, cursor, first, **kw):
            yield chunk
            if len(resumed) == 1:
                return

    monkeypatch.setattr(service, "stream", stream)
    yield resumed


def test_chromium_event_source_opens_with_a_ticket_and_resumes_with_last_event_id(
    server: str,  # noqa: F811 - fixtures of test_dashboard_browser
    browser: Browser,  # noqa: F811
    cut_first_stream: list[str],
    access_log: Collect,  # noqa: F811
) -> None:
    from tests.api.builders import bearer, make_user

    job_id = make_job(status=JobStatus.RUNNING)
    add_epochs(job_id, history(3))
    base = httpx.Client(base_url=server, headers=bearer(make_user()))
    ticket = base.post(f"/v1/jobs/{job_id}/events/ticket").json()["ticket"]
    browser.open(f"{server}/healthz")
    browser.evaluate(
        f"""window.got = []; window.opened = 0;
        const source = new EventSource("/v1/jobs/{job_id}/events?ticket={ticket}");
        source.onopen = () => window.opened++;
        for (const name of ["status", "epoch"]) source.addEventListener(name, (e) =>
            window.got.push([name, e.lastEventId, JSON.parse(e.data)]));
        source.onerror = () => {{ if (source.readyState === 2) window.closed = true; }};
        window.source = source;"""
    )
    until(browser, "the first stream", "window.got.length >= 4")
    until(browser, "a reconnect", "window.opened >= 2")
    add_epochs(job_id, history(5)[3:], first=4)
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.SUCCEEDED))
    until(browser, "the final status", "window.got.some(g => g[2].status === 'succeeded')")
    got = browser.evaluate("window.got")
    browser.evaluate("window.source.close()")
    epochs = [g[2]["epoch"] for g in got if g[0] == "epoch"]
    assert epochs == [1, 2, 3, 4, 5]  # none lost, none repeated
    assert cut_first_stream[:2] == ["0:", "3:running"]  # resumed from Last-Event-ID
    assert [g[0] for g in got].count("status") == 2  # running, then succeeded
    assert not any(ticket in line for line in access_log.lines)
    assert any("ticket=[redacted]" in line for line in access_log.lines)

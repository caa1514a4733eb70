"""The client's event stream against a fake API whose streams end early, as a proxy's
timeout ends them (a clean end of the body, before the job's final status): it reconnects
with Last-Event-ID, loses and repeats no epoch, and gives up after a bounded number of
reconnects that bring nothing."""

import time
from typing import Any

import httpx
import pytest

from descent_client.client import DescentClient, DescentError

EPOCHS = 7


def event(event_id: str, name: str, data: str) -> str:
    return f"id: {event_id}\nevent: {name}\ndata: {data}\n\n"


def job_stream(cursor: int, status: str | None, cut_after: int) -> str:
    """What the API sends after ``cursor`` (the stream's id rules), ``cut_after`` events."""
    out = []
    if status != "running":
        out.append(event(f"{cursor}:running", "status", '{"id": "j", "status": "running"}'))
    for epoch in range(cursor + 1, EPOCHS + 1):
        out.append(event(f"{epoch}:running", "epoch", f'{{"epoch": {epoch}, "metrics": {{}}}}'))
    out.append(event(f"{EPOCHS}:succeeded", "status", '{"id": "j", "status": "succeeded"}'))
    return "".join(out[:cut_after])


def test_a_cut_stream_is_resumed_with_last_event_id_and_no_epoch_is_lost_or_repeated() -> None:
    sent: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        last = request.headers.get("last-event-id")
        sent.append(last)
        epoch, _, status = (last or "0:").partition(":")
        body = ": keepalive\n\n" + job_stream(int(epoch), status or None, cut_after=3)
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    epochs: list[int] = []
    statuses: list[str] = []
    with DescentClient("http://x", token="t", transport=httpx.MockTransport(handle)) as client:
        client_events = client.events("j", after=0, backoff=(0, 0))
        for got in client_events:
            if got.event == "epoch":
                epochs.append(got.data["epoch"])
            else:
                statuses.append(got.data["status"])
    assert epochs == list(range(1, EPOCHS + 1))
    assert statuses == ["running", "succeeded"]
    # 1 status + 7 epochs + 1 status, 3 a connection: 3 connections, each resuming.
    assert sent == [None, "2:running", "5:running"]


def test_wait_follows_a_cut_stream_to_the_final_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    calls = [0]

    def handle(request: httpx.Request) -> httpx.Response:
        calls[0] += 1
        epoch, _, status = (request.headers.get("last-event-id") or "0:").partition(":")
        return httpx.Response(200, text=job_stream(int(epoch), status or None, cut_after=2))

    seen: list[int] = []
    transport = httpx.MockTransport(handle)
    with DescentClient("http://x", token="t", transport=transport) as client:
        job = client.wait("j", on_epoch=lambda e: seen.append(e["epoch"]))
    assert job["status"] == "succeeded" and seen == list(range(1, EPOCHS + 1))
    assert calls[0] == 5  # 9 events, 2 a connection


@pytest.mark.parametrize("answer", ["empty", "502", "refused"])
def test_reconnects_that_bring_nothing_are_bounded_with_a_growing_backoff(
    answer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    calls = [0]

    def handle(request: httpx.Request) -> httpx.Response:
        calls[0] += 1
        if answer == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if answer == "502":
            return httpx.Response(502, text="bad gateway")
        return httpx.Response(200, text="")

    transport = httpx.MockTransport(handle)
    with DescentClient("http://x", token="t", transport=transport) as client:
        with pytest.raises(DescentError, match="4 reconnects brought nothing") as raised:
            list(client.events("j", max_reconnects=4, backoff=(0.5, 2.0)))
    assert raised.value.status_code == 0
    assert calls[0] == 5  # the first connection and 4 reconnects
    assert waits == [0.5, 1.0, 2.0, 2.0]


def test_a_stream_that_keeps_bringing_events_is_never_given_up() -> None:
    """Each connection brings one event: the count of empty reconnects starts again."""

    def handle(request: httpx.Request) -> httpx.Response:
        epoch, _, status = (request.headers.get("last-event-id") or "0:").partition(":")
        return httpx.Response(200, text=job_stream(int(epoch), status or None, cut_after=1))

    transport = httpx.MockTransport(handle)
    with DescentClient("http://x", token="t", transport=transport) as client:
        got: list[Any] = list(client.events("j", max_reconnects=1, backoff=(0, 0)))
    assert [e.id for e in got][-1] == f"{EPOCHS}:succeeded" and len(got) == EPOCHS + 2


def test_an_error_answer_is_raised_at_once() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(404, json={"detail": "no job j"}))
    with DescentClient("http://x", token="t", transport=transport) as client:
        with pytest.raises(DescentError, match="no job j"):
            list(client.events("j", backoff=(0, 0)))

"""The event stream: order, ids, resuming with Last-Event-ID, the end of a finished job."""

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.events import service
from store.db import session_scope
from store.models import Job, JobStatus
from tests.api.builders import add_epochs, history, make_job


def read_events(
    client: TestClient,
    job_id: str,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    **headers: str,
) -> list[dict[str, Any]]:
    """The whole stream as [{"id", "event", "data"}], comments and retry lines skipped;
    ``on_event`` is called with each event as it arrives."""
    events: list[dict[str, Any]] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        current: dict[str, Any] = {}
        for line in response.iter_lines():
            if not line:
                if "event" in current:
                    events.append(current)
                    if on_event is not None:
                        on_event(current)
                current = {}
            elif line.startswith("id: "):
                current["id"] = line[4:]
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
    return events


def epochs_of(events: list[dict[str, Any]]) -> list[int]:
    return [e["data"]["epoch"] for e in events if e["event"] == "epoch"]


def test_a_finished_job_streams_its_epochs_then_its_final_status(client: TestClient) -> None:
    job_id = make_job(status=JobStatus.SUCCEEDED)
    add_epochs(job_id, history(7))
    events = read_events(client, job_id)
    assert epochs_of(events) == list(range(1, 8))
    assert [e["event"] for e in events] == ["epoch"] * 7 + ["status"]
    final = events[-1]
    assert final["data"]["id"] == job_id and final["data"]["status"] == "succeeded"
    assert final["id"] == "7:succeeded"
    assert events[2]["data"]["metrics"]["val_loss"] == pytest.approx(history(7)[2]["val_loss"])


def test_resuming_with_last_event_id_repeats_and_skips_nothing(client: TestClient) -> None:
    job_id = make_job(status=JobStatus.SUCCEEDED)
    add_epochs(job_id, history(9))
    whole = read_events(client, job_id)
    cut = whole[3]["id"]  # after epoch 4, the status not yet seen
    rest = read_events(client, job_id, **{"Last-Event-ID": cut})
    assert epochs_of(rest) == [5, 6, 7, 8, 9]
    assert rest[-1]["event"] == "status"
    # ?after= starts after an epoch too.
    after = client.get(f"/v1/jobs/{job_id}/events", params={"after": 8})
    assert [line for line in after.text.splitlines() if line.startswith("id: ")] == [
        "id: 9:",
        "id: 9:succeeded",
    ]
    # Holding everything already: 204, which tells a browser to stop reconnecting.
    done = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": whole[-1]["id"]})
    assert done.status_code == 204


def test_a_live_job_streams_status_changes_and_epochs_in_order(client: TestClient) -> None:
    """In lock step: the job changes once the stream has sent the previous change, so each
    change is seen by a poll of its own however fast or slow the machine is."""
    job_id = make_job(status=JobStatus.QUEUED)
    epochs = history(6)

    def set_status(status: str) -> None:
        with session_scope() as session:
            session.execute(update(Job).where(Job.id == job_id).values(status=status))

    changes: list[Callable[[], None]] = [lambda: set_status("running")]
    changes += [lambda e=e: add_epochs(job_id, [epochs[e - 1]], first=e) for e in range(1, 7)]
    changes.append(lambda: set_status("succeeded"))
    pending = iter(changes)
    events = read_events(client, job_id, on_event=lambda _: next(pending, lambda: None)())
    assert [e["id"] for e in events] == [
        "0:queued", "0:running", *(f"{e}:running" for e in range(1, 7)), "6:succeeded"
    ]  # fmt: skip
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    assert epochs_of(events) == [1, 2, 3, 4, 5, 6]
    assert [e["event"] for e in events] == ["status"] * 2 + ["epoch"] * 6 + ["status"]
    assert events[4]["data"]["metrics"]["val_loss"] == pytest.approx(epochs[2]["val_loss"])


def test_heartbeat_comments_keep_a_quiet_stream_open(monkeypatch: pytest.MonkeyPatch) -> None:
    import anyio

    first = service.Poll(status="running", epoch=0, records=[], job={"status": "running"})
    polls = iter(
        [
            service.Poll(status="running", epoch=0, records=[], job=None),
            service.Poll(status="succeeded", epoch=0, records=[], job={"status": "succeeded"}),
        ]
    )
    monkeypatch.setattr(service, "poll", lambda *args: next(polls))

    async def collect() -> list[str]:
        stream = service.stream(
            "j", "local", service.Cursor(), first, poll_seconds=0.01, heartbeat_seconds=0.0
        )
        return [chunk async for chunk in stream]

    chunks = anyio.run(collect)
    assert chunks[0].startswith("retry: ")
    assert ": keepalive\n\n" in chunks
    assert chunks[-1].startswith("id: 0:succeeded\nevent: status\n")


def test_unknown_job_and_bad_event_id(client: TestClient) -> None:
    assert client.get("/v1/jobs/nope/events").status_code == 404
    job_id = make_job()
    response = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "x:y"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "last-event-id"]


def test_the_stream_and_the_plot_need_a_token(sqlite_client: TestClient) -> None:
    job_id = make_job(status=JobStatus.SUCCEEDED)
    wrong = {"Authorization": "Bearer not-a-token"}
    for path in (f"/v1/jobs/{job_id}/events", f"/v1/jobs/{job_id}/plot.png"):
        assert sqlite_client.get(path, headers=wrong).status_code == 401, path
    # The dashboard's files and the Prometheus scrape hold no job's data: no token needed.
    for path in ("/", f"/jobs/{job_id}", "/dashboard/app.js", "/metrics"):
        assert sqlite_client.get(path, headers=wrong).status_code == 200, path

"""Webhook deliveries from a real job run, to a local receiver, against a real database."""

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from descent.settings import Settings, get_settings
from store import webhooks
from store.db import session_scope
from store.models import Job, Metric, WebhookDelivery
from tests.api.builders import make_user
from tests.timing import wait_for
from tests.worker.test_runner import SPEC, make_job
from worker.runner import run_job
from worker.webhooks import deliver


@dataclass
class Receiver:
    url: str
    fail_first: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)  # every request, in order
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.seen if r["answered"] == 200]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An HTTP server on 127.0.0.1 that records each POST (signature header, body, when)
    and answers 500 to the first ``fail_first`` of them, 200 after."""
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                code = 500 if len(state.seen) < state.fail_first else 200
                state.seen.append(
                    {
                        "signature": self.headers["Descent-Signature"],
                        "event": self.headers["Descent-Event"],
                        "body": body,
                        "at": time.monotonic(),
                        "answered": code,
                    }
                )
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}/hooks/descent"
    yield state
    server.shutdown()
    server.server_close()


def allow_private(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    make_user()  # the jobs' owner, whose secret signs
    monkeypatch.setenv("DESCENT_WEBHOOK_ALLOW_PRIVATE", "true")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    return get_settings()


def delivered_all(job_id: str) -> None:
    wait_for("every webhook delivery", lambda: deliver(job_id) is None, 30)


def rows(job_id: str) -> list[WebhookDelivery]:
    with session_scope() as session:
        found = list(
            session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.job_id == job_id)
                .order_by(WebhookDelivery.seq)
            )
        )
        session.expunge_all()
    return found


def test_each_event_arrives_once_in_order_and_signed(
    db_env: Settings, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    allow_private(monkeypatch)
    notify = {"url": receiver.url, "events": ["status", "best"]}
    job_id = make_job({**SPEC, "notify": notify})
    assert run_job(job_id, worker="w1") == "succeeded"
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        val = dict(
            session.execute(
                select(Metric.epoch, Metric.value).where(
                    Metric.job_id == job_id, Metric.name == "val_loss"
                )
            ).all()
        )
        secret = webhooks.secret_for(session, job.owner)
    # The epochs that set a new best, in order (each one event).
    best_epochs, best = [], float("inf")
    for epoch in sorted(val):
        if val[epoch] < best:
            best_epochs.append(epoch)
            best = val[epoch]
    # Two senders at once (a task per event): still each event exactly once.
    senders = [threading.Thread(target=delivered_all, args=(job_id,)) for _ in range(2)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    delivered_all(job_id)

    seen = receiver.accepted()
    bodies = [json.loads(r["body"]) for r in seen]
    for request in seen:
        assert webhooks.verify(secret, request["signature"], request["body"], now=int(time.time()))
        assert not webhooks.verify("another secret", request["signature"], request["body"],
                                   now=int(time.time()))  # fmt: skip
    assert [b["seq"] for b in bodies] == list(range(1, len(bodies) + 1))
    assert len(seen) == len(receiver.seen)  # nothing posted twice
    assert [r["event"] for r in seen] == [b["event"] for b in bodies]
    assert [(b["event"], b["data"]["status"]) for b in bodies] == [
        ("status", "running"),
        *[("best", "running")] * len(best_epochs),
        ("status", "succeeded"),
    ]
    assert [b["data"]["best"]["epoch"] for b in bodies[1:-1]] == best_epochs, [
        (r.seq, r.event, r.payload) for r in rows(job_id)
    ]
    assert bodies[-2]["data"]["best"]["value"] == pytest.approx(job.best_value)
    assert bodies[-1]["data"]["stop"]["reason"] == "max_epochs"
    assert {b["job_id"] for b in bodies} == {job_id}
    assert [b["id"] for b in bodies] == [f"{job_id}-{i}" for i in range(1, len(bodies) + 1)]
    logged = rows(job_id)
    assert [(r.seq, r.status, r.attempts, r.status_code) for r in logged] == [
        (i, "delivered", 1, 200) for i in range(1, len(bodies) + 1)
    ]


def test_a_failing_receiver_gets_the_event_again_with_backoff(
    sqlite_env: Settings, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    allow_private(monkeypatch, DESCENT_WEBHOOK_BACKOFF_SECONDS="0.2")
    receiver.fail_first = 2
    job_id = make_job({**SPEC, "training": {"epochs": 1, "batch_size": 16}, "notify": {
        "url": receiver.url}})  # fmt: skip
    assert run_job(job_id, worker="w1") == "succeeded"
    delivered_all(job_id)

    events = [(json.loads(r["body"])["seq"], r["answered"]) for r in receiver.seen]
    # The first event answered 500 twice, then 200; the second waited for it, in order.
    assert events == [(1, 500), (1, 500), (1, 200), (2, 200)]
    times = [r["at"] for r in receiver.seen]
    assert times[1] - times[0] >= 0.2 and times[2] - times[1] >= 0.4  # 0.2 s, doubled
    first, second = rows(job_id)
    assert (first.status, first.attempts, first.status_code, first.error) == (
        "delivered", 3, 200, None
    )  # fmt: skip
    assert [(h["attempt"], h["status_code"], h["error"]) for h in first.history] == [
        (1, 500, "answered 500"),
        (2, 500, "answered 500"),
        (3, 200, None),
    ]
    assert (second.status, second.attempts) == ("delivered", 1)


def test_a_private_address_is_refused_at_delivery(sqlite_env: Settings, receiver: Receiver) -> None:
    # Stored as if the address had been public at submit (DNS may change since).
    make_user()
    job_id = make_job({**SPEC, "training": {"epochs": 1, "batch_size": 16}, "notify": {
        "url": receiver.url}})  # fmt: skip
    assert not get_settings().webhook_allow_private
    assert run_job(job_id, worker="w1") == "succeeded"
    delivered_all(job_id)
    assert receiver.seen == []
    logged = rows(job_id)
    assert [r.status for r in logged] == ["failed", "failed"]
    assert logged[0].error.startswith("refused: the URL its host '127.0.0.1' is a loopback")


def test_a_pruned_trial_sends_pruned_before_its_status(sqlite_env: Settings) -> None:
    notify = {"url": "https://hooks.example.org/x", "events": ["pruned", "status"]}
    job_id = make_job({**SPEC, "notify": notify}, status="running")
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        job.status = "succeeded"
        job.stop = {"reason": "pruned", "rule": "median", "epoch": 2, "detail": "pruned"}
    assert [(r.seq, r.event, r.payload["data"]["stop"]["reason"]) for r in rows(job_id)] == [
        (1, "pruned", "pruned"),
        (2, "status", "pruned"),
    ]
    # A job without notify records nothing.
    other = make_job(SPEC, status="running")
    with session_scope() as session:
        session.get_one(Job, other).status = "failed"
    assert rows(other) == []

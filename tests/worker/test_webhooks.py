"""Webhook deliveries from a real job run, to a local receiver, against a real database."""

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from descent.settings import Settings, get_settings
from store import webhooks
from store.db import get_sessionmaker, session_scope
from store.models import Job, Metric, WebhookDelivery, utcnow
from tests.api.builders import make_user
from tests.timing import wait_for
from tests.worker.test_runner import SPEC, make_job
from worker.runner import run_job
from worker.sweeper import sweep
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
                        "delivery": self.headers["Descent-Delivery"],
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


def assert_each_once_in_order(receiver: Receiver, job_id: str) -> list[dict[str, Any]]:
    """What the receiver took is the job's events, each once and in seq order; the bodies.

    A repeat is tolerated exactly where delivery is at least once by design: an attempt
    the sender logged as failed (no answer within its timeout) although the receiver took
    it. So each event reached the receiver as many times as the sender logged attempts of
    it, every attempt before its last logged as failed, and never after a later event."""
    logged = rows(job_id)
    posts = [json.loads(r["body"]) for r in receiver.seen]
    assert [r["delivery"] for r in receiver.seen] == [b["id"] for b in posts]
    seqs = [b["seq"] for b in posts]
    assert seqs == sorted(seqs), seqs  # nothing posted after a later event
    for row in logged:
        assert row.status == "delivered", (row.seq, row.status, row.history)
        assert seqs.count(row.seq) == len(row.history) == row.attempts, (seqs, row.history)
        assert all(h["error"] is not None for h in row.history[:-1]), row.history
    first = list(dict.fromkeys(seqs))
    assert first == [r.seq for r in logged] == list(range(1, len(logged) + 1))
    return [next(b for b in posts if b["seq"] == seq) for seq in first]


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
    for request in seen:
        assert webhooks.verify(secret, request["signature"], request["body"], now=int(time.time()))
        assert not webhooks.verify("another secret", request["signature"], request["body"],
                                   now=int(time.time()))  # fmt: skip
        assert request["event"] == json.loads(request["body"])["event"]
    bodies = assert_each_once_in_order(receiver, job_id)
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
    assert [(r.seq, r.status, r.status_code) for r in rows(job_id)] == [
        (i, "delivered", 200) for i in range(1, len(bodies) + 1)
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


def test_two_senders_on_postgresql_post_each_event_once_in_order(
    postgres_env: Settings, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    allow_private(monkeypatch)
    job_id = make_job({**SPEC, "notify": {"url": receiver.url, "events": ["status", "best"]}},
                      status="running")  # fmt: skip
    for epoch in range(1, 16):  # 15 events recorded before any sender runs
        with session_scope() as session:
            job = session.get_one(Job, job_id)
            job.epoch, job.best_epoch, job.best_value = epoch, epoch, 1.0 / epoch
    with session_scope() as session:
        session.get_one(Job, job_id).status = "succeeded"
    assert len(rows(job_id)) == 16
    # Three senders (three delivery tasks) start on the same events at once.
    start = threading.Barrier(3)

    def sender() -> None:
        start.wait()
        delivered_all(job_id)

    senders = [threading.Thread(target=sender) for _ in range(3)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    bodies = assert_each_once_in_order(receiver, job_id)
    assert [b["data"]["epoch"] for b in bodies] == [*range(1, 16), 15]
    assert [b["event"] for b in bodies] == ["best"] * 15 + ["status"]


def test_events_recorded_at_once_on_postgresql_are_numbered_one_after_the_other(
    postgres_env: Settings,
) -> None:
    from sqlalchemy import text

    job_id = make_job({**SPEC, "notify": {"url": "https://hooks.example.org/x"}}, status="queued")
    first_recorded, first_may_commit = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def record_in(status: str, hold: bool) -> None:
        try:
            with session_scope() as session:
                job = session.get_one(Job, job_id)
                job.status = status
                session.flush()  # its event numbered and written, the transaction still open
                if hold:
                    first_recorded.set()
                    first_may_commit.wait(30)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    first = threading.Thread(target=record_in, args=("running", True))
    first.start()
    assert first_recorded.wait(30)
    second = threading.Thread(target=record_in, args=("failed", False))
    second.start()

    def second_waits_for_a_lock() -> bool:
        with session_scope() as session:
            return bool(session.scalar(text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )))  # fmt: skip

    # The second numbers its event only once the first has committed: it waits for it.
    wait_for("the second recorder to wait for the first's lock", second_waits_for_a_lock, 30)
    first_may_commit.set()
    first.join(30)
    second.join(30)
    assert errors == []
    assert [(r.seq, r.payload["data"]["status"]) for r in rows(job_id)] == [
        (1, "running"),
        (2, "failed"),
    ]


def test_a_claim_outlived_is_posted_again_and_the_late_answer_is_dropped(
    sqlite_env: Settings, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    from datetime import timedelta

    from worker.webhooks import _record

    settings = allow_private(monkeypatch)
    job_id = make_job({**SPEC, "notify": {"url": receiver.url}}, status="running")
    with session_scope() as session:
        session.get_one(Job, job_id).status = "failed"
    [row] = rows(job_id)
    # A sender claimed attempt 1 and died mid-POST: its claim has expired.
    with session_scope() as session:
        found = session.get_one(WebhookDelivery, row.id)
        found.status, found.attempts = "sending", 1
        found.next_attempt_at = found.created_at - timedelta(seconds=1)
    delivered_all(job_id)
    [row] = rows(job_id)
    assert (row.status, row.attempts, [h["attempt"] for h in row.history]) == ("delivered", 2, [2])
    assert [json.loads(r["body"])["id"] for r in receiver.seen] == [f"{job_id}-1"]
    # The first sender's answer comes back late: the row is no longer its to write.
    assert _record(row.id, 1, 500, "answered 500", settings) is None
    [after] = rows(job_id)
    assert (after.status, after.attempts, after.history) == ("delivered", 2, row.history)


# ---------------------------------------------------------------------------- plain endings

LOST = {"status": "running", "worker": "gone/1", "heartbeat_at": utcnow().replace(year=2000)}


def claimed_again(job_id: str, settings: Settings) -> None:
    """A delivery of the job (its message redelivered, or sent again by a sweeper)."""
    assert run_job(job_id, worker="w/2", settings=settings) == "skipped"


def swept(job_id: str, settings: Settings) -> None:
    assert sweep(get_sessionmaker(), lambda *sent: pytest.fail(f"sent {sent}"), settings) == []


def refused_by_the_broker(job_id: str, settings: Settings) -> None:
    from api.errors import Unavailable
    from api.jobs.service import enqueue_job

    class DownBroker:
        def send_training(self, job_id: str, queue: str) -> None:
            raise ConnectionError("the broker is down")

    with pytest.raises(Unavailable):
        enqueue_job(job_id, "cpu", DownBroker())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "retry_failures", "end", "status", "failure"),
    [
        ({**LOST, "attempt": 1, "cancel_requested": True}, None, claimed_again, "cancelled", None),
        ({**LOST, "attempt": 3}, None, claimed_again, "failed", "worker_lost"),
        ({**LOST, "attempt": 1}, "connection", claimed_again, "failed", "worker_lost"),
        ({**LOST, "attempt": 1, "cancel_requested": True}, None, swept, "cancelled", None),
        ({**LOST, "attempt": 3}, None, swept, "failed", "worker_lost"),
        ({**LOST, "attempt": 1}, "connection", swept, "failed", "worker_lost"),
        ({}, None, refused_by_the_broker, "failed", None),
    ],
    ids=[
        "claim-cancel-flag",
        "claim-out-of-attempts",
        "claim-lost-not-retried",
        "sweep-cancel-flag",
        "sweep-out-of-attempts",
        "sweep-lost-not-retried",
        "send-refused",
    ],
)
def test_a_job_ended_by_a_plain_update_records_its_status_event_once(
    db_env: Settings,
    monkeypatch: pytest.MonkeyPatch,
    fields: dict[str, Any],
    retry_failures: str | None,
    end: Callable[[str, Settings], None],
    status: str,
    failure: str | None,
) -> None:
    """Ended by a compare-and-set UPDATE (not through the ORM): exactly one ``status``
    event with the terminal status, its delivery task sent once that is committed; the
    same ending run again records none."""
    settings = db_env
    if retry_failures is not None:
        settings = db_env.model_copy(update={"retry_failures": retry_failures})
    job_id = make_job({**SPEC, "notify": {"url": "https://hooks.example.org/x"}}, **fields)
    notified: list[tuple[list[str], int]] = []

    def notifier(job_ids: Iterable[str]) -> None:
        notified.append((list(job_ids), len(rows(job_id))))  # read from another session

    monkeypatch.setattr(webhooks, "_notifier", notifier)
    for _ in range(2):
        end(job_id, settings)
    assert notified == [([job_id], 1)]  # after the commit: the event is there to read
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        assert job.status == status
    (row,) = rows(job_id)
    data = row.payload["data"]
    assert (row.seq, row.event, row.status, data["status"]) == (1, "status", "pending", status)
    assert data["stop"] == job.stop and data["error"] == job.error
    if job.stop is not None:
        assert job.stop.get("failure") == failure
    assert (data["error"] is not None) == (status == "failed")


# ---------------------------------------------------------------------------- lost tasks


def test_events_whose_task_was_lost_are_posted_once_a_sweeper_finds_them_overdue(
    db_env: Settings, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    """A job's last event whose delivery task is lost (sent nowhere here: as when the
    worker that took it died, the embedded broker having forgotten the message) would
    never be posted, no later event coming to send it. A sweeper sends its task again once
    it is overdue by the grace period; an event within it is left to its own task, and a
    delivered one is not sent again."""
    from datetime import timedelta

    settings = allow_private(monkeypatch, DESCENT_RESEND_GRACE_SECONDS="30")
    sent: list[list[str]] = []
    monkeypatch.setattr(webhooks, "_notifier", lambda job_ids: sent.append(list(job_ids)))
    job_id = make_job({**SPEC, "notify": {"url": receiver.url}}, status="running")
    with session_scope() as session:
        session.get_one(Job, job_id).status = "failed"  # its status event, its task lost
    assert sent == [[job_id]] and [r.status for r in rows(job_id)] == ["pending"]

    def sweep_once() -> None:
        assert sweep(get_sessionmaker(), lambda *job: pytest.fail(f"sent {job}"), settings) == []

    sweep_once()
    assert sent == [[job_id]]  # within the grace period: its own task may still come
    with session_scope() as session:  # 31 s later
        row = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id))
        row.one().created_at = utcnow() - timedelta(seconds=31)
    # This time the task is sent and run (a worker's notifier: worker/webhooks.py).
    monkeypatch.setattr(webhooks, "_notifier", lambda job_ids: [deliver(j) for j in job_ids])
    sweep_once()
    [row] = rows(job_id)
    assert (row.status, row.attempts) == ("delivered", 1)
    assert [json.loads(r["body"])["id"] for r in receiver.accepted()] == [f"{job_id}-1"]
    sweep_once()  # delivered: nothing to send
    assert len(receiver.seen) == 1
    # A sender that died mid-POST: its claim expired more than the grace period ago.
    with session_scope() as session:
        found = session.get_one(WebhookDelivery, row.id)
        found.status, found.next_attempt_at = "sending", utcnow() - timedelta(seconds=31)
        assert webhooks.overdue(session, utcnow() - timedelta(seconds=30)) == [job_id]
        found.next_attempt_at = utcnow()
        assert webhooks.overdue(session, utcnow() - timedelta(seconds=30)) == []

"""GET /metrics: the job gauge, the queue length, the epoch histogram, HTTP latency."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from descent.settings import Settings
from store import counters
from store.db import get_engine, session_scope
from store.models import Counter, JobStatus, Metric
from tests.api.builders import SPEC, add_epochs, make_job
from tests.worker.test_runner import SHORT_SPEC, redo_from
from tests.worker.test_runner import make_job as make_runnable_job
from worker.runner import counter_source, run_job

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            match = re.fullmatch(r"([\w:]+)(?:\{(.*)\})? (\S+)", line)
            assert match, line
            name, labels, value = match.groups()
            pairs = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or "")))
            samples[(name, pairs)] = float(value)
    return samples


def test_metrics_count_jobs_queue_epochs_and_requests(sqlite_client: TestClient) -> None:
    for status in (JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.FAILED):
        make_job(status=status)
    running = make_job(status=JobStatus.RUNNING)
    # Counted by two workers as they commit their epochs; the scrape sums their rows.
    with session_scope() as session:
        for source, seconds in (("w1", 0.07), ("w1", 0.3), ("w2", 0.3), ("w2", 40.0)):
            counters.count_epoch(session, source, seconds)
    # Submitted through the API: stored as queued and sent to the (embedded) broker, where
    # no worker takes it.
    submitted = sqlite_client.post("/v1/jobs", json=SPEC)
    assert submitted.status_code == 201, submitted.text
    sqlite_client.get(f"/v1/jobs/{running}")

    samples = scrape(sqlite_client)
    jobs = {labels[0][1]: v for (name, labels), v in samples.items() if name == "descent_jobs"}
    assert jobs == {"queued": 1, "running": 1, "succeeded": 2, "failed": 1, "cancelled": 0}
    assert samples[("descent_queue_length", (("queue", "cpu"),))] == 1
    assert samples[("descent_queue_length", (("queue", "gpu"),))] == 0

    def bucket(le: str) -> float:
        return samples[("descent_epoch_duration_seconds_bucket", (("le", le),))]

    assert (bucket("0.05"), bucket("0.1"), bucket("0.25"), bucket("0.5")) == (0, 1, 1, 3)
    assert bucket("30.0") == 3 and bucket("60.0") == 4 and bucket("+Inf") == 4
    assert samples[("descent_epoch_duration_seconds_count", ())] == 4
    assert abs(samples[("descent_epoch_duration_seconds_sum", ())] - 40.67) < 1e-9

    latency = {
        dict(labels)["route"]
        for (name, labels), _ in samples.items()
        if name == "descent_http_request_duration_seconds_count"
    }
    assert {"/v1/jobs", "/v1/jobs/{job_id}"} <= latency
    assert not any(running in route for route in latency)
    counted = samples[
        (
            "descent_http_request_duration_seconds_count",
            (("method", "POST"), ("route", "/v1/jobs"), ("status", "201")),
        )
    ]
    assert counted == 1


def test_metrics_answer_without_the_database(sqlite_client: TestClient) -> None:
    """The scrape still answers when a part cannot be read (here: the counters table)."""
    from sqlalchemy import text

    with get_engine().begin() as conn:
        conn.execute(text("ALTER TABLE counters RENAME TO counters_gone"))
    try:
        samples = scrape(sqlite_client)
    finally:
        with get_engine().begin() as conn:
            conn.execute(text("ALTER TABLE counters_gone RENAME TO counters"))
    assert ("descent_jobs", (("status", "queued"),)) in samples
    assert not any(name.startswith("descent_epoch_duration") for name, _ in samples)


def test_metrics_have_process_series_and_a_route_for_the_docs(sqlite_client: TestClient) -> None:
    for url in ("/openapi.json", "/docs", "/v1/nothing-here"):
        sqlite_client.get(url)
    text = sqlite_client.get("/metrics").text
    assert "process_resident_memory_bytes " in text or "process_cpu_seconds_total " in text
    assert "python_info{" in text and "python_gc_collections_total{" in text
    count = "descent_http_request_duration_seconds_count"
    assert f'{count}{{method="GET",route="/openapi.json",status="200"}} 1.0' in text
    assert f'{count}{{method="GET",route="/docs",status="200"}} 1.0' in text
    assert f'{count}{{method="GET",route="unmatched",status="404"}} 1.0' in text
    assert f'{count}{{method="GET",route="unmatched",status="200"}}' not in text


def test_the_queue_length_on_redis_counts_each_queue_and_its_priority_lists(
    configure: Any, tmp_path: Path, redis_broker: tuple[str, str]
) -> None:
    """Production's broker: the lengths of each queue's Redis lists under this service's key
    prefix (a task sent with a priority waits in a list of its own); other prefixes' lists
    are not counted."""
    from celery import Celery

    from api.main import create_app
    from descent.queue import TRAIN_TASK, make_celery
    from tests.api.builders import bearer, make_user
    from tests.conftest import migrated

    url, prefix = redis_broker
    settings = migrated(
        configure(
            DESCENT_DATA_DIR=str(tmp_path / "data"),
            REDIS_URL=url,
            DESCENT_BROKER_KEY_PREFIX=prefix,
        )
    )
    with TestClient(create_app(settings), headers=bearer(make_user())) as client:
        assert client.post("/v1/jobs", json=SPEC).status_code == 201
        on_gpu = {**SPEC, "training": {**SPEC.get("training", {}), "device": "cuda"}}
        gpu = client.post("/v1/jobs", json=on_gpu)
        assert gpu.status_code == 201 and gpu.json()["queue"] == "gpu", gpu.text
        sender = make_celery(settings)
        other = Celery(broker=url, set_as_current=False)
        other.conf.broker_transport_options = {"global_keyprefix": f"{prefix}other-"}
        try:
            sender.send_task(TRAIN_TASK, args=["urgent"], queue="cpu", priority=3)
            other.send_task(TRAIN_TASK, args=["not ours"], queue="cpu")
        finally:
            sender.close()
            other.close()
        samples = scrape(client)
    assert samples[("descent_queue_length", (("queue", "cpu"),))] == 2
    assert samples[("descent_queue_length", (("queue", "gpu"),))] == 1


def histogram(samples: Samples) -> tuple[dict[str, float], float, float]:
    """(cumulative count by le, count, sum) of descent_epoch_duration_seconds."""
    buckets = {
        dict(labels)["le"]: value
        for (name, labels), value in samples.items()
        if name == "descent_epoch_duration_seconds_bucket"
    }
    return (
        buckets,
        samples[("descent_epoch_duration_seconds_count", ())],
        samples[("descent_epoch_duration_seconds_sum", ())],
    )


def stored_epoch_seconds() -> list[float]:
    with session_scope() as session:
        return list(session.scalars(select(Metric.value).where(Metric.name == "epoch_seconds")))


def test_epochs_are_counted_as_they_commit_and_a_redone_epoch_counts_again(
    sqlite_client: TestClient,
) -> None:
    job_id = make_runnable_job(SHORT_SPEC)
    assert run_job(job_id, worker="node-a/123") == "succeeded"
    buckets, count, total = histogram(scrape(sqlite_client))
    seconds = stored_epoch_seconds()
    assert count == 3 == len(seconds) and buckets["+Inf"] == 3
    assert total == pytest.approx(sum(seconds))
    for le, n in buckets.items():  # each bucket holds the epochs at most its bound
        if le != "+Inf":
            assert n == sum(s <= float(le) for s in seconds), le

    # The job resumes after epoch 1 (a crash lost its later checkpoints) and redoes epochs 2
    # and 3: their metrics are replaced, but the histogram only grows.
    redo_from(job_id, 1)
    assert run_job(job_id, worker="node-a/456") == "succeeded"
    buckets, count, total = histogram(scrape(sqlite_client))
    assert len(stored_epoch_seconds()) == 3
    assert count == 5 and buckets["+Inf"] == 5
    assert total > sum(seconds)
    # Both processes of node-a added to the node's rows: one row per name, not per process.
    with session_scope() as session:
        sources = set(session.scalars(select(Counter.source)))
        assert sources == {"node-a"} == {counter_source("node-a/123")}


@contextmanager
def statements() -> Iterator[list[str]]:
    """The SQL statements sent on the service's database while the block runs."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_the_scrape_reads_the_counters_never_the_metrics_table(sqlite_client: TestClient) -> None:
    job = make_job(status=JobStatus.SUCCEEDED)
    add_epochs(job, [{"epoch_seconds": 0.5, "val_loss": 1.0}] * 2000)
    with session_scope() as session:
        counters.count_epoch(session, "w1", 0.5)
    with statements() as sent:
        samples = scrape(sqlite_client)
    assert histogram(samples)[1] == 1  # the counted epoch, not the 2,000 metric rows
    assert not [s for s in sent if re.search(r"\bmetrics\b", s)], sent
    assert len([s for s in sent if re.search(r"\bcounters\b", s)]) == 1, sent


def test_counters_add_up_on_both_databases_and_roll_back_with_their_transaction(
    db_env: Settings,
) -> None:
    def totals() -> dict[str, float]:
        with session_scope() as session:
            return counters.totals(session, counters.EPOCH_NAMES)

    before = totals()  # PostgreSQL's rows outlive a test: compare with what was there
    with session_scope() as session:
        for source, seconds in (("a", 0.2), ("a", 0.2), ("b", 7.0), ("b", 9999.0)):
            counters.count_epoch(session, source, seconds)
    with pytest.raises(RuntimeError), session_scope() as session:
        counters.count_epoch(session, "a", 0.2)  # an epoch whose commit failed
        raise RuntimeError("rolled back")
    added = {name: value - before[name] for name, value in totals().items()}
    assert added[counters.EPOCH_COUNT] == 4
    assert added[counters.EPOCH_SUM] == pytest.approx(0.4 + 7.0 + 9999.0)
    assert added[counters.bucket_name(0.25)] == 2 and added[counters.bucket_name(10.0)] == 1
    # Past the last bound: in the count (+Inf) only.
    assert sum(added[counters.bucket_name(b)] for b in counters.EPOCH_BUCKETS) == 3
    with session_scope() as session:
        rows = session.scalar(
            select(func.count())
            .select_from(Counter)
            .where(
                Counter.source.in_(["a", "b"]),
                Counter.name == counters.EPOCH_COUNT,
            )
        )
    assert rows == 2  # one row per source, updated in place

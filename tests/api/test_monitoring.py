"""GET /metrics: the job gauge, the queue length, the epoch histogram, HTTP latency."""

import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from store.models import JobStatus
from tests.api.builders import SPEC, add_epochs, make_job

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
    add_epochs(running, [{"epoch_seconds": s, "val_loss": 1.0} for s in (0.07, 0.3, 0.3, 40.0)])
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
    """The scrape still answers when a part cannot be read (here: the metrics table)."""
    from sqlalchemy import text

    from store.db import get_engine

    with get_engine().begin() as conn:
        conn.execute(text("ALTER TABLE metrics RENAME TO metrics_gone"))
    try:
        samples = scrape(sqlite_client)
    finally:
        with get_engine().begin() as conn:
            conn.execute(text("ALTER TABLE metrics_gone RENAME TO metrics"))
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

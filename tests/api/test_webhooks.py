"""Webhooks through the API: notify URLs checked at submit, the secret, the delivery log."""

import pytest
from fastapi.testclient import TestClient

from descent.settings import Settings, get_settings
from store.db import session_scope
from store.models import Job, JobStatus, WebhookDelivery
from tests.api.builders import bearer, make_job, make_user, spec


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_private_notify_urls_are_422(sqlite_client: TestClient, url: str) -> None:
    response = sqlite_client.post("/v1/jobs", json=spec(notify={"url": url}))
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "notify", "url"]
    assert "loopback, private or link-local" in error["msg"]
    assert "webhook_allow_private" in error["msg"]


def test_a_study_base_with_a_private_notify_url_is_422(sqlite_client: TestClient) -> None:
    body = {
        "base": spec(notify={"url": "http://127.0.0.1/hook"}),
        "space": {"optimizer.lr": {"choice": [0.01, 0.1]}},
        "algorithm": "grid",
    }
    response = sqlite_client.post("/v1/studies", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "base", "notify", "url"]


@pytest.mark.parametrize(
    "notify, loc",
    [
        ({"url": "ftp://example.org/hook"}, ["body", "notify", "url"]),
        ({"url": "https://example.org/hook", "events": ["done"]}, ["body", "notify", "events", 0]),
        ({"url": "https://example.org/hook", "events": []}, ["body", "notify", "events"]),
    ],
)
def test_bad_notify_fields_are_422(
    sqlite_client: TestClient, notify: dict[str, object], loc: list[object]
) -> None:
    response = sqlite_client.post("/v1/jobs", json=spec(notify=notify))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == loc


def test_public_and_allowed_private_urls_are_taken(
    sqlite_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    public = {"url": "https://93.184.215.14/hook", "events": ["status", "best"]}
    job = sqlite_client.post("/v1/jobs", json=spec(notify=public))
    assert job.status_code == 201, job.text
    assert job.json()["spec"]["notify"] == public
    plain = sqlite_client.post("/v1/jobs", json=spec()).json()
    # Where events go is not part of what the job trains.
    assert job.json()["spec_hash"] == plain["spec_hash"]
    monkeypatch.setenv("DESCENT_WEBHOOK_ALLOW_PRIVATE", "true")
    get_settings.cache_clear()
    private = sqlite_client.post("/v1/jobs", json=spec(notify={"url": "http://127.0.0.1:9/h"}))
    assert private.status_code == 201
    assert private.json()["spec"]["notify"]["events"] == ["status"]


def test_the_secret_is_made_once_per_user(client: TestClient, db_env: Settings) -> None:
    first = client.get("/v1/webhooks/secret").json()
    assert first["secret"].startswith("whsec_") and len(first["secret"]) == 6 + 64
    assert first["header"] == "Descent-Signature"
    assert client.get("/v1/webhooks/secret").json() == first
    other = client.get("/v1/webhooks/secret", headers=bearer(make_user("other"))).json()
    assert other["secret"] != first["secret"]


def test_the_delivery_log_is_the_jobs_events_in_order(client: TestClient, db_env: Settings) -> None:
    url = "https://hooks.example.org/descent"
    job_id = make_job(
        status=JobStatus.RUNNING, spec=spec(notify={"url": url, "events": ["status", "best"]})
    )
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        job.best_epoch, job.best_value, job.epoch = 1, 0.5, 1
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        job.status = JobStatus.FAILED
        job.error = "boom"
    with session_scope() as session:
        row = session.query(WebhookDelivery).filter_by(job_id=job_id, seq=2).one()
        row.attempts, row.status_code, row.error, row.status = 1, 502, "answered 502", "pending"
        at = "2026-01-01T00:00:00+00:00"
        row.history = [{"attempt": 1, "status_code": 502, "error": "answered 502", "at": at}]
    items = client.get(f"/v1/jobs/{job_id}/deliveries").json()["items"]
    assert [(i["seq"], i["event"], i["status"]) for i in items] == [
        (1, "best", "pending"),
        (2, "status", "pending"),
    ]
    assert items[0]["payload"]["data"]["best"]["value"] == 0.5
    assert items[1]["payload"]["data"] == {
        "status": "failed", "epoch": 1, "stop": None, "error": "boom"
    }  # fmt: skip
    assert items[1]["id"] == f"{job_id}-2" and items[1]["url"] == url
    assert (items[1]["attempts"], items[1]["status_code"], items[1]["error"]) == (
        1, 502, "answered 502"
    )  # fmt: skip
    assert items[1]["history"][0]["status_code"] == 502
    other = bearer(make_user("other"))
    assert client.get(f"/v1/jobs/{job_id}/deliveries", headers=other).status_code == 404
    assert client.get(f"/v1/jobs/{make_job()}/deliveries").json() == {"items": []}

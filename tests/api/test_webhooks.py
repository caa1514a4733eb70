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
        ({"url": "http://[abc/hook"}, ["body", "notify", "url"]),  # no IPv6 address
        ({"url": "https://example.org:99999/hook"}, ["body", "notify", "url"]),
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


def test_a_users_default_notify_is_set_read_cleared_and_used_at_submit(
    client: TestClient, db_env: Settings
) -> None:
    assert client.get("/v1/webhooks/notify").json() == {"notify": None}
    default = {"url": "https://93.184.215.14/default", "events": ["status", "pruned"]}
    put = client.put("/v1/webhooks/notify", json=default)
    assert put.status_code == 200, put.text
    assert put.json() == {"notify": default}
    assert client.get("/v1/webhooks/notify").json() == {"notify": default}
    # Another user has none.
    other = bearer(make_user("other"))
    assert client.get("/v1/webhooks/notify", headers=other).json() == {"notify": None}

    # A job naming none takes it (and shows it); one naming its own keeps its own.
    taken = client.post("/v1/jobs", json=spec()).json()
    assert taken["spec"]["notify"] == default
    own = {"url": "https://93.184.215.14/own", "events": ["best"]}
    assert client.post("/v1/jobs", json=spec(notify=own)).json()["spec"]["notify"] == own
    assert client.post("/v1/jobs", json=spec(), headers=other).json()["spec"]["notify"] is None
    # So does a study's base, from which its trials are made.
    study = client.post("/v1/studies", json={
        "base": spec(), "space": {"optimizer.lr": {"choice": [0.01, 0.1]}}, "algorithm": "grid"
    })  # fmt: skip
    assert study.status_code == 201, study.text
    with session_scope() as session:
        from store.models import Study

        assert session.get_one(Study, study.json()["id"]).spec["base"]["notify"] == default

    # An event of the job goes to the default's URL.
    with session_scope() as session:
        session.get_one(Job, taken["id"]).status = JobStatus.RUNNING
    [delivery] = client.get(f"/v1/jobs/{taken['id']}/deliveries").json()["items"]
    assert (delivery["url"], delivery["event"]) == (default["url"], "status")

    assert client.delete("/v1/webhooks/notify").status_code == 204
    assert client.get("/v1/webhooks/notify").json() == {"notify": None}
    assert client.post("/v1/jobs", json=spec()).json()["spec"]["notify"] is None


@pytest.mark.parametrize(
    "body, loc, message",
    [
        ({"url": "http://169.254.169.254/latest"}, ["body", "url"], "loopback, private"),
        ({"url": "http://10.0.0.1/hook"}, ["body", "url"], "webhook_allow_private"),
        ({"url": "ftp://example.org/hook"}, ["body", "url"], "should match pattern"),
        ({"url": "http://[abc/hook"}, ["body", "url"], "not a valid URL (Invalid IPv6 URL)"),
        ({"url": "https://example.org/h", "events": ["done"]}, ["body", "events", 0], "Input"),
    ],
)
def test_a_bad_default_notify_is_422_and_not_stored(
    sqlite_client: TestClient, body: dict[str, object], loc: list[object], message: str
) -> None:
    response = sqlite_client.put("/v1/webhooks/notify", json=body)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == loc and message in error["msg"], error
    assert sqlite_client.get("/v1/webhooks/notify").json() == {"notify": None}


def test_a_job_cancelled_while_queued_sends_its_status_event_once(
    client: TestClient, db_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.runner import claim

    sent: list[list[str]] = []
    monkeypatch.setattr(client.app.state.task_queue, "send_webhooks", lambda ids: sent.append(
        list(ids)))  # fmt: skip
    notify = {"url": "https://93.184.215.14/hook", "events": ["status", "best"]}
    job = client.post("/v1/jobs", json=spec(notify=notify)).json()
    assert client.get(f"/v1/jobs/{job['id']}/deliveries").json() == {"items": []}
    assert sent == []

    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202  # twice: no news
    # The worker that gets the job's task later finds it cancelled and records nothing.
    assert claim(job["id"], "w1") is None

    items = client.get(f"/v1/jobs/{job['id']}/deliveries").json()["items"]
    assert [(i["seq"], i["event"], i["status"]) for i in items] == [(1, "status", "pending")]
    data = items[0]["payload"]["data"]
    assert (data["status"], data["epoch"], data["stop"]["reason"]) == ("cancelled", 0, "cancelled")
    assert sent == [[job["id"]]]  # its delivery task, sent once the cancel committed
    # A job without notify records nothing when cancelled.
    plain = client.post("/v1/jobs", json=spec()).json()
    assert client.post(f"/v1/jobs/{plain['id']}/cancel").status_code == 202
    assert client.get(f"/v1/jobs/{plain['id']}/deliveries").json() == {"items": []}
    assert sent == [[job["id"]]]

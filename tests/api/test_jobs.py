"""Submitting, listing, reading and cancelling jobs."""

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.jobs.schemas import JobStatusName
from descent.settings import Settings
from store.db import session_scope
from store.models import Job, JobStatus
from tests.api.builders import SPEC, bearer, count_jobs, make_job, make_jobs, make_user, spec


def queued_messages(settings: Settings) -> list[dict[str, Any]]:
    """The messages waiting in the embedded broker (no worker runs in these tests)."""
    with sqlite3.connect(settings.data_dir / "broker.db") as conn:
        rows = conn.execute(
            "SELECT q.name, m.payload FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id"
        ).fetchall()
    return [{"queue": queue, **json.loads(payload)} for queue, payload in rows]


def test_submit_stores_a_queued_job_and_sends_it(client: TestClient, db_env: Settings) -> None:
    response = client.post("/v1/jobs", json=spec(name="digits-mlp"))
    assert response.status_code == 201
    job = response.json()
    assert job["status"] == "queued"
    assert job["name"] == "digits-mlp"
    assert job["queue"] == "cpu"
    assert job["epoch"] == 0 and job["attempt"] == 0 and job["cancel_requested"] is False
    assert job["best"] == {
        "epoch": None,
        "metric": "val_loss",
        "mode": "min",
        "value": None,
        "checkpoint_id": None,
    }
    assert job["last"] == {"epoch": 0, "value": None}
    assert job["stop"] is None and job["error"] is None and job["diagnosis"] is None
    assert job["started_at"] is None and job["finished_at"] is None
    assert job["created_at"].endswith(("Z", "+00:00"))
    # The stored spec is the validated one, defaults filled in.
    assert job["spec"]["optimizer"]["betas"] == [0.9, 0.999]
    assert len(job["spec_hash"]) == 64

    assert client.get(f"/v1/jobs/{job['id']}").json() == job
    [message] = queued_messages(db_env)
    assert message["queue"] == "cpu"
    assert message["headers"]["task"] == "training.run"
    assert job["id"] in message["body"] or job["id"] in json.dumps(message)


def test_cuda_jobs_go_to_the_gpu_queue(sqlite_client: TestClient, sqlite_env: Settings) -> None:
    job = sqlite_client.post("/v1/jobs", json=spec(training={"epochs": 3, "device": "cuda"})).json()
    assert job["queue"] == "gpu"
    assert [m["queue"] for m in queued_messages(sqlite_env)] == ["gpu"]


def test_early_stopping_sets_what_best_means(sqlite_client: TestClient) -> None:
    job = sqlite_client.post(
        "/v1/jobs", json=spec(early_stopping={"monitor": "val_accuracy", "patience": 3})
    ).json()
    assert job["best"]["metric"] == "val_accuracy"
    assert job["best"]["mode"] == "max"


def test_broker_down_fails_the_job_and_answers_503(
    configure: Callable[..., Settings], tmp_path: Path
) -> None:
    from api.main import create_app

    settings = configure(
        DESCENT_DATA_DIR=str(tmp_path / "data"), DESCENT_BROKER_URL="redis://127.0.0.1:1/0"
    )
    from descent.migrate import upgrade

    upgrade()
    with TestClient(create_app(settings), headers=bearer(make_user())) as client:
        response = client.post("/v1/jobs", json=SPEC)
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert detail.startswith("could not queue the job: ")
        [job] = client.get("/v1/jobs").json()["items"]
        assert job["status"] == "failed"
        assert job["error"] == detail
        assert job["finished_at"] is not None


BAD_SPECS = [
    # (body, field path that the error must name, error type)
    (spec(dataset={"name": "no-such-dataset"}), ["body", "dataset", "name"], "literal_error"),
    (spec(optimizer={"name": "adagrad-typo", "lr": 0.1}), ["body", "optimizer", "name"], None),
    (spec(optimizer={"name": "adam", "lr": -1}), ["body", "optimizer", "lr"], "greater_than"),
    (spec(surprise=1), ["body", "surprise"], "extra_forbidden"),
    # A cross-field rule names the field it refuses.
    (
        spec(model={"norm": "batch"}, training={"batch_size": 1}),
        ["body", "model", "norm"],
        "invalid_spec",
    ),
    (
        spec(optimizer={"name": "adam", "momentum": 0.5}),
        ["body", "optimizer", "momentum"],
        "invalid_spec",
    ),
]


@pytest.mark.parametrize(("body", "loc", "kind"), BAD_SPECS)
def test_bad_spec_is_422_naming_the_field_and_changes_nothing(
    client: TestClient, db_env: Settings, body: dict[str, Any], loc: list[str], kind: str | None
) -> None:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list)
    matching = [e for e in detail if e["loc"][: len(loc)] == loc]
    assert matching, detail
    assert all(e["msg"] for e in matching)
    if kind:
        assert matching[0]["type"] == kind
    assert count_jobs() == 0
    assert not (db_env.data_dir / "broker.db").exists() or not queued_messages(db_env)


@pytest.mark.parametrize(
    ("raw", "loc_start", "kind"),
    [
        (b'{"dataset": {"name": "digits"', ["body"], "json_invalid"),
        (b"", ["body"], "missing"),
        (b"[1, 2]", ["body"], None),
        # JSON has no NaN; a spec with one is refused, whether a constraint sees it or not.
        (
            b'{"dataset": {"name": "digits"}, "optimizer": {"lr": NaN}}',
            ["body", "optimizer", "lr"],
            None,
        ),
        (
            b'{"dataset": {"name": "digits"}, "early_stopping": {"stopping_threshold": Infinity}}',
            ["body", "early_stopping", "stopping_threshold"],
            None,
        ),
    ],
)
def test_malformed_body_is_422_json(
    sqlite_client: TestClient, raw: bytes, loc_start: list[str], kind: str | None
) -> None:
    response = sqlite_client.post(
        "/v1/jobs", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    # The answer itself is strict JSON: no NaN, no exception objects.
    detail = json.loads(response.text, parse_constant=pytest.fail)["detail"]
    assert detail[0]["loc"][: len(loc_start)] == loc_start
    if kind:
        assert detail[0]["type"] == kind
    assert "Traceback" not in response.text
    assert count_jobs() == 0


def test_list_pages_newest_first(client: TestClient) -> None:
    ids = make_jobs(5)
    seen: list[str] = []
    cursor = None
    pages = 0
    for _ in range(10):  # 3 pages expected: a cursor that never ends fails, not hangs
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/jobs", params=params).json()
        seen += [job["id"] for job in page["items"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert pages == 3


def test_list_defaults_and_limits(sqlite_client: TestClient) -> None:
    make_jobs(3)
    page = sqlite_client.get("/v1/jobs").json()
    assert len(page["items"]) == 3 and page["next"] is None
    for limit in (0, 201):
        assert sqlite_client.get("/v1/jobs", params={"limit": limit}).status_code == 422
    assert sqlite_client.get("/v1/jobs", params={"limit": 200}).status_code == 200


def test_list_filters_by_status(client: TestClient) -> None:
    make_jobs(2, status=JobStatus.SUCCEEDED)
    failed = make_jobs(3, status=JobStatus.FAILED)
    page = client.get("/v1/jobs", params={"status": "failed", "limit": 2}).json()
    assert [j["status"] for j in page["items"]] == ["failed", "failed"]
    rest = client.get("/v1/jobs", params={"status": "failed", "cursor": page["next"]}).json()
    assert [j["id"] for j in page["items"] + rest["items"]] == failed[::-1]
    assert rest["next"] is None


def test_list_refuses_a_bad_status_or_cursor(sqlite_client: TestClient) -> None:
    response = sqlite_client.get("/v1/jobs", params={"status": "finished"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "status"]
    for cursor in ("not-a-cursor", "!!!", "bm9waXBl"):
        response = sqlite_client.get("/v1/jobs", params={"cursor": cursor})
        assert response.status_code == 422, cursor
        assert response.json()["detail"][0]["loc"] == ["query", "cursor"]


def test_status_names_match_the_store() -> None:
    assert set(JobStatusName.__args__) == set(JobStatus.ALL)  # type: ignore[attr-defined]


def test_jobs_of_another_owner_are_invisible(client: TestClient) -> None:
    other = make_job(owner="someone-else")
    assert client.get(f"/v1/jobs/{other}").status_code == 404
    assert client.post(f"/v1/jobs/{other}/cancel").status_code == 404
    assert client.get("/v1/jobs").json()["items"] == []


def test_job_json_carries_progress_and_is_strict_json(client: TestClient, db_env: Settings) -> None:
    # PostgreSQL's json type refuses NaN; SQLite stores whatever it is given.
    nan = float("nan") if db_env.database_url.startswith("sqlite") else None
    job_id = make_job(
        status=JobStatus.SUCCEEDED,
        epoch=7,
        attempt=1,
        best_epoch=5,
        best_value=0.25,
        best_checkpoint_id="c" * 32,
        last_value=float("inf"),
        stop={"reason": "early_stopping", "rule": "patience", "epoch": 7, "detail": "no gain"},
        diagnosis={
            "verdict": "overfitting",
            "summary": "val_loss rose",
            "evidence": {"best": {"epoch": 5, "val_loss": nan}},
            "remedies": ["more data"],
            "gap": [0.1, nan],
        },
    )
    response = client.get(f"/v1/jobs/{job_id}")
    job = json.loads(response.text, parse_constant=pytest.fail)
    assert job["best"] == {
        "epoch": 5,
        "metric": "val_loss",
        "mode": "min",
        "value": 0.25,
        "checkpoint_id": "c" * 32,
    }
    assert job["last"] == {"epoch": 7, "value": None}
    assert job["stop"]["rule"] == "patience"
    assert job["diagnosis"]["gap"] == [0.1, None]
    assert job["diagnosis"]["evidence"] == {"best": {"epoch": 5, "val_loss": None}}


def test_cancel_a_queued_job_ends_it_at_once(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=SPEC).json()["id"]
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "cancelled"
    assert job["finished_at"] is not None
    assert job["stop"]["reason"] == "cancelled" and job["stop"]["epoch"] == 0
    assert job["stop"]["detail"]
    assert client.get(f"/v1/jobs/{job_id}").json() == job
    # Again: nothing changes, still 202.
    again = client.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 202 and again.json() == job


def test_cancel_a_running_job_flags_it_for_the_worker(client: TestClient) -> None:
    job_id = make_job(status=JobStatus.RUNNING, epoch=3)
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "running" and job["cancel_requested"] is True
    with session_scope() as session:
        row = session.get(Job, job_id)
        assert row is not None and row.cancel_requested and row.finished_at is None


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED])
def test_cancel_a_finished_job_is_409(client: TestClient, status: str) -> None:
    job_id = make_job(status=status)
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 409
    assert status in response.json()["detail"]
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == status


def test_the_job_is_committed_before_it_is_sent(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.queue import TaskQueue

    seen: list[str | None] = []

    def send_training(self: TaskQueue, job_id: str, queue: str) -> None:
        with session_scope() as session:  # another connection: sees committed rows only
            job = session.get(Job, job_id)
            seen.append(job.status if job else None)

    monkeypatch.setattr(TaskQueue, "send_training", send_training)
    assert client.post("/v1/jobs", json=SPEC).status_code == 201
    assert seen == ["queued"]


def test_nothing_is_stored_or_sent_when_the_request_fails(
    sqlite_client: TestClient, sqlite_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.jobs import routes

    def broken(job: Job) -> None:
        raise RuntimeError("after the insert, before the commit")

    monkeypatch.setattr(routes.JobPublic, "from_row", broken)
    response = sqlite_client.post("/v1/jobs", json=SPEC)
    assert response.status_code == 500
    assert count_jobs() == 0
    assert not (sqlite_env.data_dir / "broker.db").exists() or not queued_messages(sqlite_env)


def test_a_body_that_is_not_json_is_422(sqlite_client: TestClient) -> None:
    response = sqlite_client.post(
        "/v1/jobs", content=json.dumps(SPEC), headers={"content-type": "text/plain"}
    )
    assert response.status_code == 422
    assert count_jobs() == 0


def test_validation_errors_are_made_json_safe() -> None:
    from api.errors import clean_validation_errors

    [error] = clean_validation_errors(
        [
            {
                "type": "value_error",
                "loc": ("body", "optimizer", 0),
                "msg": "Value error, bad",
                "input": float("nan"),
                "ctx": {"error": ValueError("bad"), "limit": float("inf")},
                "url": "https://errors.pydantic.dev",
            }
        ]
    )
    assert error == {
        "type": "value_error",
        "loc": ["body", "optimizer", 0],
        "msg": "Value error, bad",
        "input": None,
        "ctx": {"error": "bad", "limit": None},
    }
    json.dumps(error, allow_nan=False)

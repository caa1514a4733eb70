"""Per-owner limits (OWASP API4): a job's size is refused with 422 naming the field; jobs at
once and the compute budget with 429 and the reason. Defaults come from the settings,
overrides from the user."""

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from descent.settings import Settings
from store.db import session_scope
from store.models import JobStatus
from store.users import set_limits, used_device_hours
from tests.api.builders import bearer, count_jobs, make_job, make_user, spec


def test_epochs_over_the_limit_name_the_field(client: TestClient) -> None:
    with session_scope() as session:
        set_limits(session, "local", {"epochs": 50})
    response = client.post("/v1/jobs", json=spec(training={"epochs": 51, "batch_size": 32}))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "training", "epochs"]
    assert "at most 50" in error["msg"]
    assert client.post("/v1/jobs", json=spec(training={"epochs": 50})).status_code == 201


def test_a_model_over_the_parameter_limit_is_refused(client: TestClient) -> None:
    with session_scope() as session:
        set_limits(session, "local", {"parameters": 1000})
    response = client.post("/v1/jobs", json=spec(model={"arch": "mlp", "hidden": [256]}))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "model"]
    assert "parameters; this account's limit is 1,000" in error["msg"]
    assert count_jobs() == 0


def test_jobs_at_once_are_limited_per_owner(client: TestClient) -> None:
    with session_scope() as session:
        set_limits(session, "local", {"active_jobs": 2})
    make_job(status=JobStatus.RUNNING)
    make_job(status=JobStatus.SUCCEEDED)  # ended jobs do not count
    assert client.post("/v1/jobs", json=spec()).status_code == 201
    response = client.post("/v1/jobs", json=spec())
    assert response.status_code == 429
    assert "2 jobs queued or running" in response.json()["detail"]
    # Another owner has a limit of their own (the settings' default).
    other = client.post("/v1/jobs", json=spec(), headers=bearer(make_user("frank")))
    assert other.status_code == 201


def test_a_used_up_compute_budget_refuses_new_jobs(client: TestClient) -> None:
    with session_scope() as session:
        set_limits(session, "local", {"device_hours": 0.5})
    make_job(status=JobStatus.SUCCEEDED, runtime_seconds=1000.0)
    assert client.post("/v1/jobs", json=spec()).status_code == 201
    make_job(status=JobStatus.SUCCEEDED, runtime_seconds=900.0)  # 1900 s > 0.5 h
    response = client.post("/v1/jobs", json=spec())
    assert response.status_code == 429
    assert "compute budget of 0.5 device-hours is used up" in response.json()["detail"]


def test_a_job_on_n_processes_counts_n_times_against_the_budget(client: TestClient) -> None:
    """Each of its ranks holds a device: 500 s on 4 processes are 2000 device-seconds."""
    with session_scope() as session:
        set_limits(session, "local", {"device_hours": 0.5})
    four = spec(training={"epochs": 3, "batch_size": 32, "processes": 4})
    make_job(status=JobStatus.SUCCEEDED, runtime_seconds=500.0, spec=four)
    make_job(status=JobStatus.SUCCEEDED, runtime_seconds=100.0)  # one process (the default)
    with session_scope() as session:
        assert used_device_hours(session, "local") == pytest.approx(2100 / 3600)
    response = client.post("/v1/jobs", json=spec())
    assert response.status_code == 429  # 2100 s > 0.5 h; counted once each, 600 s would pass
    assert "compute budget of 0.5 device-hours is used up (0.58 used)" in response.json()["detail"]


def test_a_runtime_limit_on_n_processes_is_checked_n_times_at_submit(client: TestClient) -> None:
    with session_scope() as session:
        set_limits(session, "local", {"device_hours": 1.0})
    training = {"epochs": 3, "batch_size": 48, "max_runtime_seconds": 1200}
    # 1200 s on 3 processes: exactly the hour left, accepted; on 4: 1.333 device-hours.
    assert (
        client.post("/v1/jobs", json=spec(training={**training, "processes": 3})).status_code == 201
    )
    response = client.post("/v1/jobs", json=spec(training={**training, "processes": 4}))
    assert response.status_code == 429
    detail = response.json()["detail"]
    assert "1.333 device-hours (training.max_runtime_seconds 1200 on 4 processes)" in detail


def test_limits_default_to_the_settings(configure: Callable[..., Settings], tmp_path: Path) -> None:
    from api.main import create_app
    from tests.conftest import migrated

    settings = migrated(
        configure(DESCENT_DATA_DIR=str(tmp_path / "data"), DESCENT_LIMIT_EPOCHS="7")
    )
    with TestClient(create_app(settings), headers=bearer(make_user())) as client:
        response = client.post("/v1/jobs", json=spec(training={"epochs": 8}))
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "training", "epochs"]

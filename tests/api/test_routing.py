"""Which queue a job goes to: ``cuda`` → gpu; ``auto`` → gpu only where the deployment runs
GPU workers (``DESCENT_GPU_WORKERS``), else cpu; ``cpu`` → cpu. A study's trials go where
their base spec's jobs would."""

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from descent.queue import training_queue
from descent.settings import Settings
from store.db import session_scope
from store.models import Study
from tests.api.builders import bearer, make_user, spec
from tests.api.test_jobs import queued_messages

ROUTES = [
    # (device, gpu_workers, queue)
    ("cuda", False, "gpu"),
    ("cuda", True, "gpu"),
    ("auto", False, "cpu"),
    ("auto", True, "gpu"),
    ("cpu", False, "cpu"),
    ("cpu", True, "cpu"),
]


@pytest.mark.parametrize(("device", "gpu_workers", "queue"), ROUTES)
def test_training_queue_by_device_and_deployment(
    device: str, gpu_workers: bool, queue: str
) -> None:
    assert training_queue(device, Settings(gpu_workers=gpu_workers)) == queue


def test_queue_names_come_from_the_settings() -> None:
    settings = Settings(gpu_workers=True, cpu_queue="small", gpu_queue="a100")
    assert [training_queue(d, settings) for d in ("cuda", "auto", "cpu")] == [
        "a100",
        "a100",
        "small",
    ]


@pytest.mark.parametrize("gpu_workers", [False, True])
def test_submitted_jobs_and_study_trials_are_sent_to_their_queue(
    configure: Callable[..., Settings], tmp_path: Path, gpu_workers: bool
) -> None:
    from api.main import create_app
    from tests.conftest import migrated

    settings = migrated(
        configure(
            DESCENT_DATA_DIR=str(tmp_path / "data"),
            DESCENT_GPU_WORKERS="true" if gpu_workers else "false",
        )
    )
    assert settings.gpu_workers is gpu_workers
    expected = {d: q for d, w, q in ROUTES if w is gpu_workers}
    with TestClient(create_app(settings), headers=bearer(make_user())) as client:
        for device in ("cuda", "auto", "cpu"):
            body = spec(name=device, training={"epochs": 2, "batch_size": 32, "device": device})
            job = client.post("/v1/jobs", json=body)
            assert job.status_code == 201, job.text
            assert job.json()["queue"] == expected[device], device
        study = client.post(
            "/v1/studies",
            json={
                "base": spec(training={"epochs": 2, "batch_size": 32, "device": "auto"}),
                "space": {"optimizer.lr": {"choice": [0.1, 0.01]}},
                "algorithm": "grid",
                "max_trials": 2,
            },
        )
        assert study.status_code == 201, study.text
    sent = [m["queue"] for m in queued_messages(settings) if m["headers"]["task"] == "training.run"]
    assert sorted(sent) == sorted(expected.values())
    with session_scope() as session:
        assert session.scalar(select(Study.queue)) == expected["auto"]

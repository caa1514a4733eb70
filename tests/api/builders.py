"""Test data for the API tests, written straight into the store."""

import copy
import hashlib
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from store.artifacts import get_artifacts
from store.db import session_scope
from store.models import Checkpoint, Job, JobStatus, Metric
from store.users import create_token, create_user, get_user, set_limits

SPEC: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "model": {"arch": "mlp", "hidden": [16]},
    "optimizer": {"name": "adam", "lr": 0.01},
    "training": {"epochs": 3, "batch_size": 32},
}


def make_user(name: str = "local", **limits: Any) -> str:
    """A user (made if missing, its limits overridden) and a new API token; returns the token."""
    with session_scope() as session:
        if get_user(session, name) is None:
            create_user(session, name, limits)
        elif limits:
            set_limits(session, name, limits)
        _, token = create_token(session, name, label="tests")
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def spec(**changes: Any) -> dict[str, Any]:
    """The minimal valid spec, with top-level sections replaced or added."""
    body = copy.deepcopy(SPEC)
    body.update(changes)
    return body


def make_job(
    *,
    status: str = JobStatus.QUEUED,
    name: str | None = "digits-mlp",
    owner: str = "local",
    created_at: datetime | None = None,
    **fields: Any,
) -> str:
    """A job row as the worker would leave it; returns its id."""
    values: dict[str, Any] = {
        "owner": owner,
        "name": name,
        "status": status,
        "spec": SPEC,
        "spec_hash": "0" * 64,
        "queue": "cpu",
        "monitor": "val_loss",
        "mode": "min",
        "created_at": created_at or datetime.now(UTC),
    }
    if status in JobStatus.TERMINAL:
        values["finished_at"] = datetime.now(UTC)
    values.update(fields)
    with session_scope() as session:
        job = Job(**values)
        session.add(job)
        session.flush()
        return job.id


def make_jobs(count: int, **fields: Any) -> list[str]:
    """``count`` jobs a second apart, oldest first."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [make_job(created_at=start + timedelta(seconds=i), **fields) for i in range(count)]


def add_epochs(job_id: str, history: list[dict[str, float | None]], *, first: int = 1) -> None:
    """Per-epoch metric rows (step 0) for epochs first, first+1, ...; bumps the job's epoch."""
    rows = [
        {"job_id": job_id, "epoch": first + i, "step": 0, "name": name, "value": value}
        for i, metrics in enumerate(history)
        for name, value in metrics.items()
    ]
    with session_scope() as session:
        session.execute(insert(Metric), rows)
        job = session.get(Job, job_id)
        assert job is not None
        job.epoch = first + len(history) - 1


def add_checkpoint(
    job_id: str,
    epoch: int,
    *,
    value: float | None = 0.5,
    content: bytes | None = None,
    best: bool = False,
) -> tuple[str, bytes]:
    """A checkpoint row with a real weights file in the artifact store: (id, file bytes)."""
    data = content if content is not None else f"weights of {job_id} at epoch {epoch}".encode()
    artifacts = get_artifacts()
    weights = artifacts.job_dir(job_id) / f"epoch{epoch}.safetensors"
    weights.write_bytes(data)
    state = artifacts.job_dir(job_id) / f"epoch{epoch}.state.pt"
    state.write_bytes(b"state")
    sha256 = hashlib.sha256(data).hexdigest()
    weights_key, state_key = artifacts.publish(weights, sha256), artifacts.publish(state)
    with session_scope() as session:
        checkpoint = Checkpoint(
            job_id=job_id,
            epoch=epoch,
            value=value,
            weights_path=weights_key,
            state_path=state_key,
            bytes=len(data),
            sha256=sha256,
        )
        session.add(checkpoint)
        session.flush()
        if best:
            job = session.get(Job, job_id)
            assert job is not None
            job.best_checkpoint_id = checkpoint.id
            job.best_epoch = epoch
            job.best_value = value
        return checkpoint.id, data


def history(epochs: int, seed: int = 0) -> list[dict[str, float | None]]:
    """A noisy, mostly falling loss curve with the other per-epoch metrics."""
    rng = random.Random(seed)
    out = []
    for e in range(1, epochs + 1):
        val = 1.0 / (1 + 0.05 * e) + rng.uniform(-0.05, 0.05)
        out.append(
            {
                "train_loss": 0.9 / (1 + 0.06 * e) + rng.uniform(-0.03, 0.03),
                "val_loss": val,
                "val_accuracy": 1 - val / 2,
                "lr": 0.01,
                "epoch_seconds": rng.uniform(0.1, 0.2),
            }
        )
    return out


def count_jobs() -> int:
    with session_scope() as session:
        return session.query(Job).count()


def post_study_and_export(client: Any, checkpoint_id: str) -> dict[str, str]:
    """A small grid study and an export of ``checkpoint_id``, posted through ``client`` (a
    TestClient holding its owner's token): {"study": id, "export": id}."""
    study = client.post(
        "/v1/studies",
        json={
            "base": spec(),
            "space": {"optimizer.lr": {"choice": [0.1, 0.01]}},
            "algorithm": "grid",
            "max_trials": 2,
        },
    )
    export = client.post(f"/v1/checkpoints/{checkpoint_id}/exports", json={"format": "onnx"})
    assert study.status_code == 201 and export.status_code == 202, (study.text, export.text)
    return {"study": study.json()["id"], "export": export.json()["id"]}

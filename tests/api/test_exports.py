"""Exports through the API: asked for, queued for a worker, followed, downloaded."""

import hashlib
import io

import pytest
import torch
from fastapi.testclient import TestClient

from core import load_model
from core.spec import JobSpec
from descent.settings import Settings
from store.artifacts import get_artifacts
from store.db import session_scope
from store.models import Checkpoint, Job, JobStatus
from tests.api.builders import add_checkpoint, bearer, make_job, make_user
from tests.api.test_jobs import queued_messages
from tests.worker import test_runner
from worker.exports import run_export, validation_inputs
from worker.runner import run_job


def test_an_export_is_queued_for_a_worker(client: TestClient, db_env: Settings) -> None:
    job_id = make_job(status=JobStatus.SUCCEEDED)
    checkpoint_id, _ = add_checkpoint(job_id, 2, best=True)
    response = client.post(f"/v1/checkpoints/{checkpoint_id}/exports", json={"format": "onnx"})
    assert response.status_code == 202
    export = response.json()
    assert export["status"] == "queued" and export["format"] == "onnx"
    assert export["checkpoint_id"] == checkpoint_id and export["job_id"] == job_id
    assert export["parity"] is None and export["error"] is None
    assert export["bytes"] is None and export["sha256"] is None
    [message] = queued_messages(db_env)
    assert message["queue"] == "cpu" and message["headers"]["task"] == "export.run"
    assert message["headers"]["argsrepr"] == repr([export["id"]])
    assert client.get(f"/v1/exports/{export['id']}").json() == export
    second = client.post(
        f"/v1/checkpoints/{checkpoint_id}/exports", json={"format": "torchscript"}
    ).json()
    listed = client.get(f"/v1/checkpoints/{checkpoint_id}/exports").json()["items"]
    assert [e["id"] for e in listed] == [export["id"], second["id"]]
    # Not done yet: no file.
    file = client.get(f"/v1/exports/{export['id']}/file")
    assert file.status_code == 409
    assert file.json() == {"detail": f"export {export['id']} has no file: it is queued"}


def test_another_users_checkpoints_and_exports_are_404(
    client: TestClient, db_env: Settings
) -> None:
    mine = make_job(status=JobStatus.SUCCEEDED)
    my_checkpoint, _ = add_checkpoint(mine, 1, best=True)
    export = client.post(f"/v1/checkpoints/{my_checkpoint}/exports", json={"format": "onnx"}).json()
    theirs = make_job(status=JobStatus.SUCCEEDED, owner="other")
    their_checkpoint, _ = add_checkpoint(theirs, 1, best=True)
    other = bearer(make_user("other"))
    for path in (
        f"/v1/checkpoints/{their_checkpoint}/exports",
        f"/v1/checkpoints/{'0' * 32}/exports",
    ):
        response = client.post(path, json={"format": "onnx"})
        assert response.status_code == 404, path
        assert client.get(path).status_code == 404
    assert client.get(f"/v1/checkpoints/{their_checkpoint}/exports", headers=other).json() == {
        "items": []
    }
    for path in (f"/v1/exports/{export['id']}", f"/v1/exports/{export['id']}/file"):
        response = client.get(path, headers=other)
        assert response.status_code == 404
        assert response.json() == {"detail": f"export {export['id']} not found"}
    assert client.get(f"/v1/checkpoints/{my_checkpoint}/exports", headers=other).status_code == 404


@pytest.mark.parametrize(
    "body, loc",
    [
        ({"format": "tflite"}, ["body", "format"]),
        ({}, ["body", "format"]),
        ({"format": "onnx", "opset": 9}, ["body", "opset"]),
    ],
)
def test_a_bad_request_is_422_naming_the_field(
    sqlite_client: TestClient, sqlite_env: Settings, body: dict[str, object], loc: list[str]
) -> None:
    job_id = make_job(status=JobStatus.SUCCEEDED)
    checkpoint_id, _ = add_checkpoint(job_id, 1, best=True)
    response = sqlite_client.post(f"/v1/checkpoints/{checkpoint_id}/exports", json=body)
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [loc]
    assert not (sqlite_env.data_dir / "broker.db").exists() or not queued_messages(sqlite_env)


def test_a_torchscript_export_downloads_and_reproduces_the_model(
    sqlite_client: TestClient,
) -> None:
    spec = {**test_runner.SPEC, "training": {"epochs": 2, "batch_size": 16, "seed": 0}}
    job_id = test_runner.make_job(spec, name="iris mlp")
    assert run_job(job_id, worker="w1") == "succeeded"
    with session_scope() as session:
        checkpoint = session.get_one(Checkpoint, session.get_one(Job, job_id).best_checkpoint_id)
        weights, epoch = checkpoint.weights_path, checkpoint.epoch
    created = sqlite_client.post(
        f"/v1/checkpoints/{checkpoint.id}/exports", json={"format": "torchscript"}
    ).json()
    assert run_export(created["id"]) == "succeeded"  # what the worker does with the task
    export = sqlite_client.get(f"/v1/exports/{created['id']}").json()
    assert export["status"] == "succeeded" and export["finished_at"] is not None
    assert export["parity"]["max_abs_diff"] < 1e-4 and export["parity"]["samples"] == 30

    response = sqlite_client.get(f"/v1/exports/{export['id']}/file")
    assert response.status_code == 200
    digest = hashlib.sha256(response.content).hexdigest()
    assert digest == export["sha256"] and len(response.content) == export["bytes"]
    assert response.headers["etag"] == f'"{digest}"'
    assert response.headers["content-disposition"] == (
        f'attachment; filename="iris-mlp-epoch{epoch}.pt"'
    )
    again = sqlite_client.get(
        f"/v1/exports/{export['id']}/file", headers={"if-none-match": f'"{digest}"'}
    )
    assert again.status_code == 304

    loaded = torch.jit.load(io.BytesIO(response.content)).eval()
    parsed = JobSpec.model_validate(spec)
    model = load_model(parsed, get_artifacts().path(weights))
    x = validation_inputs(parsed, None)
    with torch.no_grad():
        assert (loaded(x) - model(x)).abs().max().item() < 1e-4

"""Job specs that name uploads and earlier jobs: checked at submit against the owner's own
rows (another owner's read as missing), with the model's parameter counts on the job."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.spec import JobSpec
from store.db import session_scope
from store.models import JobStatus
from store.users import set_limits
from tests.api.builders import add_checkpoint, bearer, count_jobs, make_job, make_user
from tests.files import csv_bytes, imagefolder_zip, weights_bytes

AUTOENCODER = JobSpec.model_validate(
    {
        "task": "reconstruction",
        "dataset": {"name": "digits"},
        "model": {"arch": "cnn", "channels": [8, 16]},
        "training": {"epochs": 2, "batch_size": 64},
    }
).model_dump(mode="json")
ENCODER_LOC = ["body", "backbone", "job", "from_job"]


def autoencoder_job(
    owner: str = "local", status: str = JobStatus.SUCCEEDED, best: bool = True
) -> str:
    job_id = make_job(owner=owner, status=status, spec=AUTOENCODER, name="digits-ae")
    if best:
        add_checkpoint(job_id, 2, best=True)
    return job_id


def classifier(from_job: str, **backbone: Any) -> dict[str, Any]:
    return {
        "task": "classification",
        "dataset": {"name": "digits", "train_size": 100},
        "backbone": {"from_job": from_job, "freeze": True, **backbone},
        "training": {"epochs": 2, "batch_size": 32},
    }


def refused(response, loc: list[str], *words: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 422, response.text
    errors = [e for e in response.json()["detail"] if e["loc"] == loc]
    assert errors, response.json()["detail"]
    for word in words:
        assert word in errors[0]["msg"], errors[0]["msg"]


def test_a_finished_autoencoders_encoder_becomes_a_classifiers_backbone(
    client: TestClient,
) -> None:
    source = autoencoder_job()
    response = client.post("/v1/jobs", json=classifier(source))
    assert response.status_code == 201, response.text
    job = response.json()
    # Counted from the specs: the encoder's two conv blocks (1→8→16 channels, 3x3) frozen,
    # a linear head on its 16x2x2 features to the 10 digits.
    frozen = (1 * 8 * 9 + 8) + (8 * 16 * 9 + 16)
    assert job["parameters"] == {"trainable": 16 * 2 * 2 * 10 + 10, "frozen": frozen}
    assert job["spec"]["backbone"]["from_job"] == source
    assert client.get(f"/v1/jobs/{job['id']}").json()["parameters"] == job["parameters"]


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED])
def test_a_backbone_job_that_has_not_succeeded_is_refused(client: TestClient, status: str) -> None:
    source = autoencoder_job(status=status, best=False)
    refused(client.post("/v1/jobs", json=classifier(source)), ENCODER_LOC, f"is {status}")
    assert count_jobs() == 1


def test_another_owners_job_reads_as_missing(client: TestClient) -> None:
    theirs = autoencoder_job(owner="mallory")
    response = client.post("/v1/jobs", json=classifier(theirs))
    refused(response, ENCODER_LOC, f"there is no job {theirs!r}")
    # Exactly what an id that never existed gets: nothing tells the two apart.
    missing = client.post("/v1/jobs", json=classifier("f" * 32))
    [theirs_error] = response.json()["detail"]
    [missing_error] = missing.json()["detail"]
    assert theirs_error["msg"].replace(theirs, "ID") == missing_error["msg"].replace("f" * 32, "ID")


def test_a_backbone_job_must_fit_and_have_a_checkpoint(client: TestClient) -> None:
    refused(
        client.post("/v1/jobs", json=classifier(autoencoder_job(best=False))),
        ENCODER_LOC,
        "without a checkpoint",
    )
    # An encoder of 8x8 one-channel digits does not take a tabular dataset.
    tabular = {**classifier(autoencoder_job()), "dataset": {"name": "iris"}}
    refused(client.post("/v1/jobs", json=tabular), ENCODER_LOC, "takes images")


def test_uploads_named_by_a_spec_are_checked_at_submit(client: TestClient) -> None:
    dataset = client.post(
        "/v1/datasets", files={"file": ("d.csv", csv_bytes(rows=30))}, data={"target": "label"}
    ).json()
    spec = {"dataset": {"source": "upload", "id": dataset["id"]}, "training": {"epochs": 2}}
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    job = response.json()
    # The upload's format, target and task are filled in from what its check found.
    assert job["spec"]["dataset"]["format"] == "csv"
    assert job["spec"]["dataset"]["target"] == "label"
    assert job["spec"]["task"] == "classification"
    assert job["parameters"] == {"trainable": 2 * 64 + 64 + 64 * 2 + 2, "frozen": 0}
    # A spec that does not fit the upload names the field.
    wrong = {**spec, "dataset": {**spec["dataset"], "target": "a"}}
    refused(client.post("/v1/jobs", json=wrong), ["body", "dataset", "target"], "upload it again")
    cnn = {**spec, "model": {"arch": "cnn"}}
    refused(client.post("/v1/jobs", json=cnn), ["body", "model", "arch"], "tabular")
    # Another owner's upload, and a deleted one, read as missing.
    other = bearer(make_user("mallory"))
    refused(
        client.post("/v1/jobs", json=spec, headers=other),
        ["body", "dataset", "id"],
        f"there is no dataset upload {dataset['id']!r}",
    )
    assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    refused(client.post("/v1/jobs", json=spec), ["body", "dataset", "id"], "there is no dataset")
    assert count_jobs() == 1


def test_weights_uploads_are_checked_at_submit(client: TestClient) -> None:
    images = client.post("/v1/datasets", files={"file": ("i.zip", imagefolder_zip())}).json()
    weights = client.post(
        "/v1/weights", files={"file": ("w", weights_bytes())}, data={"arch": "mobilenet_v3_small"}
    ).json()
    backbone = {"arch": "mobilenet_v3_small", "weights": f"upload:{weights['id']}", "freeze": True}
    spec = {
        "dataset": {"source": "upload", "id": images["id"]},
        "backbone": {**backbone, "input_size": 32},
        "training": {"epochs": 1, "batch_size": 8},
    }
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    parameters = response.json()["parameters"]
    assert parameters["frozen"] == 1_517_856 and parameters["trainable"] == 1024 * 2 + 2
    loc = ["body", "backbone", "torchvision", "weights"]
    resnet = {**spec, "backbone": {**spec["backbone"], "arch": "resnet18"}}
    refused(client.post("/v1/jobs", json=resnet), loc, "holds mobilenet_v3_small weights")
    as_data = {**spec, "dataset": {"source": "upload", "id": weights["id"]}}
    refused(client.post("/v1/jobs", json=as_data), ["body", "dataset", "id"], "holds weights")
    swapped = {**spec, "backbone": {**spec["backbone"], "weights": f"upload:{images['id']}"}}
    refused(client.post("/v1/jobs", json=swapped), loc, "is a dataset, not weights")


def test_a_frozen_backbone_counts_against_the_parameter_limit(client: TestClient) -> None:
    with session_scope() as session:
        set_limits(session, "local", {"parameters": 1500})
    response = client.post("/v1/jobs", json=classifier(autoencoder_job()))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "model"]
    assert "1,898 parameters, 1,248 of them in a frozen backbone" in error["msg"]


def test_max_runtime_counts_against_the_compute_budget(client: TestClient) -> None:
    with session_scope() as session:
        set_limits(session, "local", {"device_hours": 1.0})
    make_job(status=JobStatus.SUCCEEDED, runtime_seconds=3000.0)  # 0.833 h used
    spec = {"dataset": {"name": "iris"}, "training": {"epochs": 5, "max_runtime_seconds": 900}}
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 429
    detail = response.json()["detail"]
    assert "0.250 device-hours (training.max_runtime_seconds 900)" in detail
    assert "0.833 of its 1 device-hours" in detail and "0.167 are left" in detail
    spec["training"]["max_runtime_seconds"] = 600
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["training"]["max_runtime_seconds"] == 600

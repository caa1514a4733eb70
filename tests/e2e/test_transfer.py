"""Transfer learning and your own data through the running service: an autoencoder's
encoder under a classifier, a torchvision backbone with uploaded weights on an uploaded
image folder, and hostile uploads (a pickle that would run code, zips that reach out of
their folder, an oversized body, a CSV without its target column)."""

import pickle
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from tests.e2e.service import Service, make_token
from tests.files import (
    csv_bytes,
    imagefolder_zip,
    pickle_payload,
    png_bytes,
    resnet18_safetensors,
    zip_of,
)

ENCODER_LOC = ["body", "backbone", "job", "from_job"]


def autoencoder(**training: Any) -> dict[str, Any]:
    return {
        "name": "digits-ae",
        "task": "reconstruction",
        "dataset": {"name": "digits", "seed": 0},
        "model": {"arch": "cnn", "channels": [16, 32]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "training": {"epochs": 3, "batch_size": 64, "seed": 0, **training},
    }


def classifier(from_job: str) -> dict[str, Any]:
    return {
        "name": "digits-from-ae",
        "task": "classification",
        # A small labelled set: the encoder learnt from all the images, labels or not.
        "dataset": {"name": "digits", "seed": 0, "train_size": 200},
        "backbone": {"from_job": from_job, "freeze": True},
        "optimizer": {"name": "adam", "lr": 0.01},
        "training": {"epochs": 3, "batch_size": 32, "seed": 0},
    }


def upload(service: Service, kind: str, name: str, content: bytes, **fields: str) -> httpx.Response:
    return service.http.post(f"/v1/{kind}", files={"file": (name, content)}, data=fields)


def refused(response: httpx.Response, loc: list[str], *words: str) -> None:
    assert response.status_code == 422, response.text
    [error] = [e for e in response.json()["detail"] if e["loc"] == loc]
    for word in words:
        assert word in error["msg"], error["msg"]


def stored_uploads(service: Service) -> set[Path]:
    root = Path(service.env["DESCENT_DATA_DIR"]) / "artifacts" / "uploads"
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def test_an_autoencoders_encoder_becomes_a_classifiers_backbone(service: Service) -> None:
    source = service.submit(autoencoder())
    assert service.wait(source["id"])["status"] == "succeeded"
    job = service.submit(classifier(source["id"]))
    final = service.wait(job["id"])
    assert final["status"] == "succeeded", final
    assert final["parameters"]["frozen"] == (1 * 16 * 9 + 16) + (16 * 32 * 9 + 32)
    assert final["parameters"]["trainable"] == 32 * 2 * 2 * 10 + 10
    history = service.metrics(job["id"])
    assert len(history) == 3
    # A linear head on the frozen encoder's features, from 200 labelled digits.
    assert history[-1]["metrics"]["val_accuracy"] > 0.5, history[-1]


def test_a_backbone_job_not_finished_or_not_yours_is_refused(embedded_service: Service) -> None:
    service = embedded_service
    running = service.submit(autoencoder(epochs=10_000))
    queued = service.submit(autoencoder(epochs=10_000))
    service.wait(running["id"], until=lambda j: j["status"] == "running")
    for job, status in ((running, "running"), (queued, "queued")):
        response = service.http.post("/v1/jobs", json=classifier(job["id"]))
        refused(response, ENCODER_LOC, f"is {status}")
    for job in (queued, running):
        service.http.post(f"/v1/jobs/{job['id']}/cancel")
    service.wait(running["id"])
    # A finished job of another user is not there for them: the same answer as no job at all.
    finished = service.submit(autoencoder(epochs=1))
    assert service.wait(finished["id"])["status"] == "succeeded"
    token = make_token(service.env, "mallory")
    response = service.http.post(
        "/v1/jobs",
        json=classifier(finished["id"]),
        headers={"Authorization": f"Bearer {token}"},
    )
    refused(response, ENCODER_LOC, f"there is no job {finished['id']!r}")


def test_a_torchvision_backbone_with_uploaded_weights_trains_on_uploaded_images(
    embedded_service: Service,
) -> None:
    service = embedded_service
    weights = upload(
        service, "weights", "resnet18.safetensors", resnet18_safetensors(), arch="resnet18"
    )
    assert weights.status_code == 201, weights.text
    assert weights.json()["info"]["arch"] == "resnet18"
    images = upload(service, "datasets", "pictures.zip", imagefolder_zip(per_class=6))
    assert images.status_code == 201, images.text
    assert images.json()["info"]["image_shape"] == [3, 32, 32]
    job = service.submit(
        {
            "name": "resnet18-pictures",
            "dataset": {"source": "upload", "id": images.json()["id"], "val_fraction": 0.34},
            "backbone": {
                "arch": "resnet18",
                "weights": f"upload:{weights.json()['id']}",
                "input_size": 32,
                "freeze": True,
            },
            "training": {"epochs": 1, "batch_size": 4, "seed": 0},
        }
    )
    assert job["spec"]["dataset"]["format"] == "imagefolder"
    assert job["spec"]["task"] == "classification"
    final = service.wait(job["id"])
    assert final["status"] == "succeeded", final
    assert final["parameters"] == {"trainable": 512 * 2 + 2, "frozen": 11_176_512}
    assert final["epoch"] == 1 and final["best"]["checkpoint_id"]
    best = service.http.get(f"/v1/jobs/{job['id']}/checkpoints/best")
    assert best.status_code == 200 and len(best.content) > 11_176_512 * 4


def test_a_pickle_uploaded_as_weights_is_refused_and_runs_nothing(
    embedded_service: Service, tmp_path: Path
) -> None:
    marker = tmp_path / "the-payload-ran"
    before = stored_uploads(embedded_service)
    response = upload(
        embedded_service, "weights", "model.pt", pickle_payload(marker), arch="resnet18"
    )
    refused(response, ["body", "file"], "torch.load(weights_only=True)")
    assert not marker.exists()
    assert stored_uploads(embedded_service) == before
    # The payload is live: unpickled, it does run (here, in the test, on purpose).
    pickle.loads(pickle_payload(tmp_path / "control"))
    assert (tmp_path / "control").exists()


@pytest.mark.parametrize(
    ("extra", "links", "words"),
    [
        ({"../outside.png": b"x"}, {}, "'..' leads out of the folder"),
        ({}, {"red/passwd.png": "/etc/passwd"}, "a symbolic link"),
    ],
    ids=["dot-dot", "symlink"],
)
def test_a_zip_reaching_out_of_its_folder_is_refused(
    embedded_service: Service, extra: dict[str, bytes], links: dict[str, str], words: str
) -> None:
    before = stored_uploads(embedded_service)
    images = {f"{c}/{i}.png": png_bytes((90, 90, 90)) for c in ("red", "blue") for i in range(3)}
    content = zip_of({**images, **extra}, links=links)
    refused(upload(embedded_service, "datasets", "d.zip", content), ["body", "file"], words)
    assert stored_uploads(embedded_service) == before


def test_an_oversized_upload_is_413_before_its_body_is_read(embedded_service: Service) -> None:
    """A body declared larger than the upload limit is refused from its headers alone: not
    a byte of it is read, so nothing of it can reach the disk."""
    before = stored_uploads(embedded_service)
    url = urlparse(embedded_service.url)
    token = embedded_service.http.headers["authorization"]
    request = (
        "POST /v1/datasets HTTP/1.1\r\n"
        f"Host: {url.netloc}\r\n"
        f"Authorization: {token}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {10**12}\r\n\r\n"
    )
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request.encode())
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 413 " in status_line, answer
    assert b"larger than the limit" in rest
    assert stored_uploads(embedded_service) == before


def test_a_csv_without_its_target_column_is_422_naming_it(embedded_service: Service) -> None:
    response = upload(embedded_service, "datasets", "d.csv", csv_bytes(), target="species")
    refused(response, ["body", "file"], "no column 'species'")
    good = upload(embedded_service, "datasets", "d.csv", csv_bytes(), target="label")
    assert good.status_code == 201, good.text
    assert good.json()["info"]["target"] == "label"
    assert embedded_service.http.delete(f"/v1/datasets/{good.json()['id']}").status_code == 204

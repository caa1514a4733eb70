"""Checkpoint listing and downloads."""

import hashlib

from fastapi.testclient import TestClient

from store.artifacts import get_artifacts
from store.db import session_scope
from store.models import Checkpoint, JobStatus
from tests.api.builders import add_checkpoint, make_job


def test_listing_marks_the_best_and_the_last(client: TestClient) -> None:
    job_id = make_job(status=JobStatus.SUCCEEDED)
    ids = {}
    for epoch, value in ((3, 0.4), (1, 0.6), (2, 0.3)):
        ids[epoch], _ = add_checkpoint(job_id, epoch, value=value, best=epoch == 2)
    items = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["items"]
    assert [c["epoch"] for c in items] == [1, 2, 3]
    assert [c["id"] for c in items] == [ids[1], ids[2], ids[3]]
    assert [c["is_best"] for c in items] == [False, True, False]
    assert [c["is_last"] for c in items] == [False, False, True]
    assert set(items[0]) == {
        "id",
        "epoch",
        "value",
        "bytes",
        "sha256",
        "is_best",
        "is_last",
        "created_at",
    }
    assert items[1]["value"] == 0.3
    assert client.get(f"/v1/jobs/{make_job()}/checkpoints").json() == {"items": []}


def test_best_download_is_the_file_with_its_checksum(client: TestClient) -> None:
    job_id = make_job(name="digits cnn/v2", status=JobStatus.SUCCEEDED)
    add_checkpoint(job_id, 1, value=0.9)
    content = b"\x00safetensors\xff" * 100
    add_checkpoint(job_id, 4, value=0.2, content=content, best=True)
    response = client.get(f"/v1/jobs/{job_id}/checkpoints/best")
    assert response.status_code == 200
    assert response.content == content
    digest = hashlib.sha256(content).hexdigest()
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["etag"] == f'"{digest}"'
    assert response.headers["x-checksum-sha256"] == digest
    assert response.headers["content-length"] == str(len(content))
    assert response.headers["content-disposition"] == (
        'attachment; filename="digits-cnn-v2-epoch4.safetensors"'
    )
    # A client holding that file gets a 304.
    again = client.get(
        f"/v1/jobs/{job_id}/checkpoints/best", headers={"if-none-match": f'"{digest}"'}
    )
    assert again.status_code == 304 and not again.content


def test_any_checkpoint_downloads_by_id(client: TestClient) -> None:
    job_id = make_job(name=None)
    checkpoint_id, content = add_checkpoint(job_id, 2)
    add_checkpoint(job_id, 3, best=True)
    response = client.get(f"/v1/checkpoints/{checkpoint_id}")
    assert response.status_code == 200 and response.content == content
    assert response.headers["x-checksum-sha256"] == hashlib.sha256(content).hexdigest()
    assert f'filename="{job_id}-epoch2.safetensors"' in response.headers["content-disposition"]


def test_no_checkpoint_yet_is_404_with_a_reason(client: TestClient) -> None:
    job_id = make_job(status=JobStatus.RUNNING)
    response = client.get(f"/v1/jobs/{job_id}/checkpoints/best")
    assert response.status_code == 404
    assert response.json() == {"detail": f"job {job_id} has no checkpoint yet"}


def test_a_missing_file_is_410_with_a_reason(client: TestClient) -> None:
    job_id = make_job(status=JobStatus.SUCCEEDED)
    checkpoint_id, _ = add_checkpoint(job_id, 1, best=True)
    with session_scope() as session:
        checkpoint = session.get(Checkpoint, checkpoint_id)
        assert checkpoint is not None
        get_artifacts().delete(checkpoint.weights_path)
    for url in (f"/v1/jobs/{job_id}/checkpoints/best", f"/v1/checkpoints/{checkpoint_id}"):
        response = client.get(url)
        assert response.status_code == 410
        assert "missing" in response.json()["detail"]


def test_checkpoints_of_another_owner_are_invisible(client: TestClient) -> None:
    job_id = make_job(owner="someone-else")
    checkpoint_id, _ = add_checkpoint(job_id, 1, best=True)
    assert client.get(f"/v1/checkpoints/{checkpoint_id}").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/checkpoints/best").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/checkpoints").status_code == 404

"""Checkpoint downloads: byte ranges, and the stored sha256 checked before a file is served."""

import hashlib
import os

from fastapi.testclient import TestClient

from store.artifacts import get_artifacts
from store.db import session_scope
from store.models import Checkpoint, JobStatus
from tests.api.builders import add_checkpoint, make_job


def test_downloads_support_byte_ranges(sqlite_client: TestClient) -> None:
    job_id = make_job(status=JobStatus.SUCCEEDED)
    content = bytes(range(256)) * 40
    checkpoint_id, _ = add_checkpoint(job_id, 1, content=content, best=True)
    url = f"/v1/checkpoints/{checkpoint_id}"
    whole = sqlite_client.get(url)
    assert whole.status_code == 200 and whole.content == content
    assert whole.headers["accept-ranges"] == "bytes"
    part = sqlite_client.get(url, headers={"Range": "bytes=100-299"})
    assert part.status_code == 206
    assert part.content == content[100:300]
    assert part.headers["content-range"] == f"bytes 100-299/{len(content)}"
    tail = sqlite_client.get(f"/v1/jobs/{job_id}/checkpoints/best", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == content[-10:]
    # A resumed download: If-Range with the ETag (the sha256) still matches.
    etag = whole.headers["etag"]
    assert etag == f'"{hashlib.sha256(content).hexdigest()}"'
    resumed = sqlite_client.get(url, headers={"Range": "bytes=4000-", "If-Range": etag})
    assert resumed.status_code == 206 and resumed.content == content[4000:]
    beyond = sqlite_client.get(url, headers={"Range": f"bytes={len(content) + 10}-"})
    assert beyond.status_code == 416


def test_a_damaged_checkpoint_file_answers_410_not_its_bytes(sqlite_client: TestClient) -> None:
    job_id = make_job(status=JobStatus.SUCCEEDED)
    checkpoint_id, content = add_checkpoint(job_id, 1, best=True)
    url = f"/v1/checkpoints/{checkpoint_id}"
    assert sqlite_client.get(url).content == content  # verified, then remembered
    with session_scope() as session:
        path = get_artifacts().path(session.get_one(Checkpoint, checkpoint_id).weights_path)
    info = path.stat()
    flipped = bytes([content[0] ^ 0xFF]) + content[1:]  # same size, one byte changed
    path.write_bytes(flipped)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))
    response = sqlite_client.get(url)
    assert response.status_code == 410
    assert "damaged" in response.json()["detail"]
    best = sqlite_client.get(f"/v1/jobs/{job_id}/checkpoints/best")
    assert best.status_code == 410
    path.write_bytes(content)  # repaired: served again
    assert sqlite_client.get(url).content == content

"""The artifact store in S3-compatible storage, against a real S3 API over HTTP (moto's
standalone server, a process of its own): files in parts with their sha256, damage caught,
checkpoint downloads streamed from the store with Range and presigned redirects, uploads
stored there, and a job that resumes from S3 with nothing left in its worker's folder."""

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from descent.settings import Settings
from store.artifacts import ChecksumMismatch, get_artifacts
from store.db import session_scope
from store.models import Checkpoint, Job, JobStatus, Upload, utcnow
from store.s3 import S3Artifacts
from tests.api.builders import add_checkpoint, bearer, make_job, make_user
from tests.conftest import migrated
from tests.files import csv_bytes
from tests.s3 import S3Server, s3_server
from tests.worker.test_reliability import SPEC, assert_same_run, job_row
from tests.worker.test_runner import make_job as make_worker_job
from worker import runner
from worker.runner import run_job

MIB = 1 << 20


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3_env(configure: Callable[..., Settings], tmp_path: Path, s3: S3Server) -> Settings:
    """SQLite, and artifacts in a new bucket, in parts of 5 MiB (S3's smallest)."""
    return migrated(
        configure(
            DESCENT_DATA_DIR=str(tmp_path / "data"),
            DESCENT_S3_MULTIPART_CHUNK_MB="5",
            **s3.env(s3.bucket()),
        )
    )


@pytest.fixture
def store(s3_env: Settings) -> S3Artifacts:
    artifacts = get_artifacts()
    assert isinstance(artifacts, S3Artifacts)
    return artifacts


def another_host(settings: Settings, folder: Path) -> S3Artifacts:
    """The same store as seen by a process with a local folder of its own."""
    return S3Artifacts.from_settings(settings.model_copy(update={"artifacts_dir": folder}))


def head(s3: S3Server, store: S3Artifacts, key: str) -> dict[str, Any]:
    return s3.client().head_object(Bucket=store.bucket, Key=store.key(key))


def overwrite(s3: S3Server, store: S3Artifacts, key: str, data: bytes) -> None:
    s3.client().put_object(Bucket=store.bucket, Key=store.key(key), Body=data)


def test_a_file_round_trips_in_parts_with_its_sha256(
    store: S3Artifacts, s3_env: Settings, s3: S3Server, tmp_path: Path
) -> None:
    data = os.urandom(12 * MIB + 123)
    digest = hashlib.sha256(data).hexdigest()
    path = store.job_dir("job1") / "epoch-00001-1.safetensors"
    path.write_bytes(data)
    key = store.publish(path, digest)
    assert key == "job1/epoch-00001-1.safetensors"
    assert not path.exists()  # stored: nothing stays in the local folder
    stored = head(s3, store, key)
    assert stored["Metadata"]["sha256"] == digest
    assert stored["ETag"].strip('"').endswith("-3")  # uploaded in 3 parts of 5 MiB
    assert stored["ContentLength"] == len(data)
    info = store.info(key)
    assert info is not None and info.size == len(data)

    other = another_host(s3_env, tmp_path / "other")
    with other.fetch(key, digest) as local:
        assert local.read_bytes() == data
        assert local.is_relative_to(tmp_path / "other")
    assert not local.exists()  # a temporary copy
    cached = other.cached(key, digest)
    assert cached == other.path(key) and cached.read_bytes() == data
    assert b"".join(other.read(key, 100, 5 * MIB + 7)) == data[100 : 5 * MIB + 8]
    assert b"".join(other.read(key, len(data) - 5)) == data[-5:]

    assert store.keys("job1") == [key]
    store.delete(key)
    assert store.info(key) is None and store.keys("job1") == []


def test_a_damaged_or_missing_object_is_never_used(
    store: S3Artifacts, s3_env: Settings, s3: S3Server, tmp_path: Path
) -> None:
    data = b"weights" * 1000
    digest = hashlib.sha256(data).hexdigest()
    path = store.job_dir("job2") / "w.safetensors"
    path.write_bytes(data)
    key = store.publish(path, digest)
    overwrite(s3, store, key, bytes([data[0] ^ 1]) + data[1:])  # same size, one bit
    other = another_host(s3_env, tmp_path / "other")
    with pytest.raises(ChecksumMismatch, match="does not match its recorded sha256"):
        with other.fetch(key, digest):
            pass
    with pytest.raises(ChecksumMismatch):
        other.cached(key, digest)
    leftovers = [p for p in (tmp_path / "other").rglob("*") if p.is_file()]
    assert leftovers == []  # neither the damaged copy nor a temp file
    with pytest.raises(FileNotFoundError, match="not in the artifact store"):
        other.cached("job2/gone.safetensors")
    assert other.info("job2/gone.safetensors") is None


def test_boto3_reads_the_endpoint_from_aws_endpoint_url(
    configure: Callable[..., Settings], tmp_path: Path, s3: S3Server
) -> None:
    env = s3.env(s3.bucket())
    del env["DESCENT_S3_ENDPOINT_URL"]
    configure(DESCENT_DATA_DIR=str(tmp_path / "data"), AWS_ENDPOINT_URL=s3.url, **env)
    store = get_artifacts()
    path = store.job_dir("j") / "f.bin"
    path.write_bytes(b"hello")
    key = store.publish(path)
    assert s3.client().get_object(Bucket=env["DESCENT_ARTIFACTS_URL"][5:].split("/")[0],
                                  Key=f"artifacts/{key}")["Body"].read() == b"hello"  # fmt: skip


@pytest.fixture
def s3_client(s3_env: Settings) -> Iterator[TestClient]:
    from api.main import create_app

    with TestClient(create_app(s3_env), headers=bearer(make_user())) as client:
        yield client


def test_checkpoint_downloads_stream_from_s3_with_ranges(
    s3_client: TestClient, store: S3Artifacts, s3: S3Server
) -> None:
    job_id = make_job(status=JobStatus.SUCCEEDED)
    content = os.urandom(3 * MIB + 17)
    checkpoint_id, _ = add_checkpoint(job_id, 1, content=content, best=True)
    with session_scope() as session:
        key = session.get_one(Checkpoint, checkpoint_id).weights_path
    assert not store.path(key).exists()  # in S3 only
    url = f"/v1/checkpoints/{checkpoint_id}"
    digest = hashlib.sha256(content).hexdigest()

    whole = s3_client.get(url)
    assert whole.status_code == 200 and whole.content == content
    assert whole.headers["etag"] == f'"{digest}"' and whole.headers["x-checksum-sha256"] == digest
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-length"] == str(len(content))
    assert "-epoch1.safetensors" in whole.headers["content-disposition"]
    part = s3_client.get(url, headers={"Range": "bytes=100-299"})
    assert part.status_code == 206 and part.content == content[100:300]
    assert part.headers["content-range"] == f"bytes 100-299/{len(content)}"
    best = f"/v1/jobs/{job_id}/checkpoints/best"
    tail = s3_client.get(best, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == content[-10:]
    resumed = s3_client.get(url, headers={"Range": f"bytes={MIB}-", "If-Range": f'"{digest}"'})
    assert resumed.status_code == 206 and resumed.content == content[MIB:]
    stale = s3_client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and len(stale.content) == len(content)
    assert s3_client.get(url, headers={"Range": f"bytes={len(content) + 5}-"}).status_code == 416
    assert s3_client.get(url, headers={"If-None-Match": f'"{digest}"'}).status_code == 304
    only_head = s3_client.head(url)
    assert only_head.status_code == 200 and only_head.content == b""
    assert only_head.headers["content-length"] == str(len(content))

    # ?redirect=true: 307 to a presigned URL of the store, which serves the same bytes.
    moved = s3_client.get(best, params={"redirect": "true"}, follow_redirects=False)
    assert moved.status_code == 307 and moved.headers["x-checksum-sha256"] == digest
    location = moved.headers["location"]
    assert location.startswith(s3.url) and "X-Amz-Signature=" in location  # SigV4
    direct = httpx.get(location, timeout=30)
    assert direct.status_code == 200 and direct.content == content
    assert "-epoch1.safetensors" in direct.headers["content-disposition"]

    # Changed in the store behind the service's back: 410, never the wrong bytes.
    overwrite(s3, store, key, bytes([content[0] ^ 1]) + content[1:])
    damaged = s3_client.get(url)
    assert damaged.status_code == 410 and "damaged" in damaged.json()["detail"]
    overwrite(s3, store, key, content)
    assert s3_client.get(url).content == content
    s3.client().delete_object(Bucket=store.bucket, Key=store.key(key))
    assert s3_client.get(best).status_code == 410


def test_uploads_are_stored_in_s3_and_deleted_from_it(
    s3_client: TestClient, store: S3Artifacts
) -> None:
    data = csv_bytes(rows=20)
    response = s3_client.post(
        "/v1/datasets", files={"file": ("d.csv", data)}, data={"target": "label"}
    )
    assert response.status_code == 201, response.text
    upload_id = response.json()["id"]
    with session_scope() as session:
        row = session.get_one(Upload, upload_id)
        key, digest = row.path, row.sha256
    assert digest == hashlib.sha256(data).hexdigest()
    info = store.info(key)
    assert info is not None and info.size == len(data)
    local = [p for p in store.root.rglob("*") if p.is_file()]
    assert local == []  # neither the staged file nor a copy stays on the API's disk
    assert s3_client.delete(f"/v1/datasets/{upload_id}").status_code == 204
    assert store.info(key) is None


class Died(BaseException):
    """Stands for a worker that dies right after an epoch's commit."""


def test_a_job_resumes_from_s3_on_a_worker_with_an_empty_folder(
    store: S3Artifacts, s3_env: Settings, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    job_id = make_worker_job(SPEC)
    real_epoch_end = runner.WorkerHooks.on_epoch_end

    def dies_after_epoch_3(self: runner.WorkerHooks, trainer: Any, record: Any) -> None:
        real_epoch_end(self, trainer, record)
        if record.epoch == 3:
            raise Died

    monkeypatch.setattr(runner.WorkerHooks, "on_epoch_end", dies_after_epoch_3)
    with pytest.raises(Died):
        run_job(job_id, worker="host-a/1")
    monkeypatch.setattr(runner.WorkerHooks, "on_epoch_end", real_epoch_end)
    with session_scope() as session:
        rows = list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)))
    assert rows and all(store.info(r.state_path) for r in rows)
    assert s3_env.artifacts_dir is not None
    # Checkpoints go up from memory: the first host kept no file of them.
    assert not [p for p in s3_env.artifacts_dir.rglob("*") if p.is_file()]
    shutil.rmtree(s3_env.artifacts_dir, ignore_errors=True)  # another host: nothing local
    with session_scope() as session:  # the first worker's lease has timed out
        session.execute(update(Job).values(heartbeat_at=utcnow() - timedelta(hours=1)))
    with caplog.at_level("INFO", logger="worker.runner"):
        assert run_job(job_id, worker="host-b/2") == "succeeded"
    assert "resumes after epoch 3" in caplog.text
    job = job_row(job_id)
    assert job.attempt == 2 and job.epoch == 6
    assert_same_run(job_id, SPEC)
    with session_scope() as session:
        rows = list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)))
    named = sorted(p for r in rows for p in (r.weights_path, r.state_path))
    assert store.keys(job_id) == named  # the older checkpoints' objects were deleted

"""Workers on many hosts: the API and two workers as production starts them, each with a
local data folder of its own (as on separate hosts), sharing only PostgreSQL, Redis and an S3
server (moto's, over HTTP).

- A job started on worker A and SIGKILLed after epoch 3 resumes on worker B from its
  checkpoint in S3 and ends with the metrics of an uninterrupted run; its best checkpoint
  downloads through the API with the sha256 the service recorded.
- A dataset uploaded through the API trains on either worker.
"""

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import postgres_database
from tests.e2e.stacks import (
    LEASE,
    RESUME_SPEC,
    Stack,
    assert_same_metrics,
    kill,
    production_stack,
    reference_run,
)
from tests.files import csv_bytes
from tests.s3 import S3Server, s3_server


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="module")
def hosts(
    s3: S3Server, redis_broker: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The API, and workers each started with a data folder of its own (``own_folder``)."""
    root = tmp_path_factory.mktemp("scaleout")
    redis_url, prefix = redis_broker
    with postgres_database() as database_url:
        env = (
            LEASE
            | s3.env(s3.bucket())
            | {
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_url,
                "DESCENT_BROKER_KEY_PREFIX": f"{prefix}scaleout:",
            }
        )
        with production_stack(root, env, "scaleout", Stack) as service:
            yield service


def local_files(folder: Path) -> list[str]:
    """Files left in a worker's own folder (its scratch and cache)."""
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_a_job_killed_on_one_host_resumes_on_another_from_s3(hosts: Stack) -> None:
    reference = reference_run(RESUME_SPEC)
    first = hosts.start_worker("host-a", own_folder=True)
    job = hosts.submit(RESUME_SPEC)
    hosts.wait(job["id"], until=lambda j: j["epoch"] >= 3 and j["best"]["checkpoint_id"],
               timeout=180, what="to pass epoch 3 with a checkpoint stored")  # fmt: skip
    kill(first)  # SIGKILL: host A is gone, and its folder with it
    killed_at = hosts.job(job["id"])["epoch"]
    assert killed_at < RESUME_SPEC["training"]["epochs"]
    second = hosts.start_worker("host-b", own_folder=True)
    try:
        final = hosts.wait(job["id"], timeout=180)
        assert final["status"] == "succeeded" and final["attempt"] == 2, final
        # Checkpoints are written while the next epochs train (one superseded while it waits
        # is skipped): the last durable one is at or behind the last committed metrics.
        log = hosts.log("host-b")
        resumed = [int(e) for e in re.findall(r"resumes after epoch (\d+)", log)]
        assert len(resumed) == 1 and 1 <= resumed[0] <= killed_at, (killed_at, log)
        assert_same_metrics(hosts, job["id"], reference, 0.0)  # bit-identical on the CPU
        # Nothing of the job stays on the host that finished it, nor on the API's: its
        # checkpoints are in S3 only. (Host A may hold the write it was killed in; that host
        # is gone with its disk.)
        left = [
            p
            for p in hosts.root.rglob("*.*")
            if p.suffix in (".safetensors", ".pt") and "host-a" not in p.parts
        ]
        assert not left, left
        best = hosts.http.get(f"/v1/jobs/{job['id']}/checkpoints/best")
        assert best.status_code == 200
        listed = hosts.http.get(f"/v1/jobs/{job['id']}/checkpoints").json()["items"]
        [row] = [c for c in listed if c["is_best"]]
        assert hashlib.sha256(best.content).hexdigest() == row["sha256"]
        assert best.headers["x-checksum-sha256"] == row["sha256"]
        assert len(best.content) == row["bytes"]
    finally:
        kill(second)


def test_an_upload_trains_on_either_host(hosts: Stack) -> None:
    response = hosts.http.post(
        "/v1/datasets", files={"file": ("d.csv", csv_bytes(rows=60))}, data={"target": "label"}
    )
    assert response.status_code == 201, response.text
    upload_id = response.json()["id"]
    spec: dict[str, Any] = {
        "dataset": {"source": "upload", "id": upload_id},
        "model": {"arch": "mlp", "hidden": [8]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "training": {"epochs": 2, "batch_size": 16, "device": "cpu"},
    }
    for name in ("host-c", "host-d"):  # one host at a time, each with an empty folder
        worker = hosts.start_worker(name, own_folder=True)
        try:
            job = hosts.submit({**spec, "name": name})
            final = hosts.wait(job["id"], timeout=120)
            assert final["status"] == "succeeded", final
            # This host fetched the upload from S3 into its own folder, checked, and kept it.
            assert f"{upload_id}.csv" in local_files(hosts.root / name)
        finally:
            kill(worker)

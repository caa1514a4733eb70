"""Jobs that name uploads and earlier jobs: the worker finds them among the owner's rows,
fails a job whose reference is gone at its start with the reason, records the model's
parameter counts when the job starts, and stops a job at its max_runtime_seconds."""

import hashlib
from pathlib import Path
from typing import Any
from urllib.error import URLError

import pytest
from sqlalchemy import select

from descent.settings import Settings
from store.artifacts import get_artifacts
from store.db import session_scope
from store.models import Checkpoint, Job, Upload, new_id
from tests.files import csv_bytes, weights_bytes
from tests.worker.test_runner import SPEC, make_job
from worker.runner import run_job


def job_row(job_id: str) -> Job:
    with session_scope() as session:
        return session.get_one(Job, job_id)


def make_upload(content: bytes, *, owner: str = "local", info: dict[str, Any] | None = None) -> str:
    """A dataset upload's row and file, as the API leaves them."""
    upload_id = new_id()
    relative = f"uploads/dataset/{upload_id}.csv"
    path = get_artifacts().path(relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    with session_scope() as session:
        session.add(
            Upload(
                id=upload_id,
                owner=owner,
                kind="dataset",
                format="csv",
                path=relative,
                bytes=len(content),
                sha256=hashlib.sha256(content).hexdigest(),
                info=info or {},
            )
        )
    return upload_id


def csv_spec(upload_id: str) -> dict[str, Any]:
    dataset = {"source": "upload", "id": upload_id, "format": "csv", "target": "label"}
    return {**SPEC, "dataset": dataset, "training": {"epochs": 2, "batch_size": 8, "seed": 0}}


def test_a_job_trains_on_its_owners_upload_and_records_its_parameters(
    sqlite_env: Settings,
) -> None:
    upload_id = make_upload(csv_bytes(rows=40))
    job_id = make_job(csv_spec(upload_id), owner="local")
    assert run_job(job_id, worker="w1") == "succeeded"
    job = job_row(job_id)
    assert job.epoch == 2
    # Two features, a hidden layer of 8, two classes.
    assert job.parameters == {"trainable": 2 * 8 + 8 + 8 * 2 + 2, "frozen": 0}


def test_a_job_whose_upload_is_gone_or_not_its_owners_fails_at_start(sqlite_env: Settings) -> None:
    theirs = make_upload(csv_bytes(rows=40), owner="mallory")
    job_id = make_job(csv_spec(theirs), owner="local")
    assert run_job(job_id, worker="w1") == "failed"
    job = job_row(job_id)
    assert job.error == f"the dataset upload {theirs!r} is not available"
    assert job.stop["failure"] == "training_error" and job.attempt == 1 and job.epoch == 0
    # Its row still there but its file gone: the reason says so.
    mine = make_upload(csv_bytes(rows=40))
    with session_scope() as session:
        path = get_artifacts().path(session.get_one(Upload, mine).path)
    path.unlink()
    job_id = make_job(csv_spec(mine), owner="local")
    assert run_job(job_id, worker="w1") == "failed"
    assert job_row(job_id).error == f"the file of the dataset upload {mine!r} is missing"


def test_an_autoencoders_encoder_trains_under_a_classifier(sqlite_env: Settings) -> None:
    autoencoder = {
        "task": "reconstruction",
        "dataset": {"name": "digits", "seed": 0},
        "model": {"arch": "cnn", "channels": [8, 16]},
        "training": {"epochs": 1, "batch_size": 64, "seed": 0},
    }
    source = make_job(autoencoder, owner="local")
    assert run_job(source, worker="w1") == "succeeded"
    spec = {
        "task": "classification",
        "dataset": {"name": "digits", "seed": 0, "train_size": 60},
        "backbone": {"from_job": source, "freeze": True},
        "training": {"epochs": 2, "batch_size": 16, "seed": 0},
    }
    job_id = make_job(spec, owner="local")
    assert run_job(job_id, worker="w1") == "succeeded", job_row(job_id).error
    frozen = (1 * 8 * 9 + 8) + (8 * 16 * 9 + 16)
    assert job_row(job_id).parameters == {"trainable": 16 * 2 * 2 * 10 + 10, "frozen": frozen}
    # Another owner's job of the same id is not theirs to take.
    theirs = make_job(spec, owner="mallory")
    assert run_job(theirs, worker="w1") == "failed"
    assert "backbone job" in job_row(theirs).error and "not available" in job_row(theirs).error
    # A best checkpoint that no longer matches its sha256 is refused, with the reason.
    with session_scope() as session:
        best = session.get_one(Checkpoint, job_row(source).best_checkpoint_id)
        path = get_artifacts().path(best.weights_path)
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    again = make_job(spec, owner="local")
    assert run_job(again, worker="w1") == "failed"
    assert "does not match its recorded sha256" in job_row(again).error


def test_max_runtime_stops_the_job_after_the_epoch_that_passed_it(sqlite_env: Settings) -> None:
    spec = {**SPEC, "training": {"epochs": 50, "batch_size": 16, "max_runtime_seconds": 1e-6}}
    job_id = make_job(spec)
    assert run_job(job_id, worker="w1") == "succeeded"
    job = job_row(job_id)
    assert job.status == "succeeded" and job.epoch == 1
    assert job.stop["reason"] == "max_runtime" and job.stop["epoch"] == 1
    assert "max_runtime_seconds" in job.stop["detail"] and job.error is None
    assert job.best_epoch == 1 and job.best_checkpoint_id is not None
    with session_scope() as session:
        kept = session.scalars(select(Checkpoint.id).where(Checkpoint.job_id == job_id)).all()
    assert job.best_checkpoint_id in kept


def test_torchvision_weights_come_from_the_cache_or_the_job_fails_saying_why(
    sqlite_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.hub

    def offline(url: str, *args: Any, **kwargs: Any) -> None:
        raise URLError(f"no network here ({url})")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    spec = {
        "dataset": {"name": "digits", "seed": 0, "train_size": 40},
        "backbone": {"arch": "mobilenet_v3_small", "input_size": 32, "freeze": True},
        "training": {"epochs": 1, "batch_size": 20, "seed": 0},
    }
    job_id = make_job(spec)
    assert run_job(job_id, worker="w1") == "failed"
    job = job_row(job_id)
    assert "weights for mobilenet_v3_small are not cached in TORCH_HOME" in job.error
    assert "cannot be downloaded: <urlopen error no network here" in job.error
    assert job.stop["failure"] == "training_error" and job.epoch == 0
    # Once torchvision's file is in the cache, the same spec trains (from the cache alone).
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    (checkpoints / "mobilenet_v3_small-047dcff4.pth").write_bytes(weights_bytes(format="pt"))
    job_id = make_job(spec)
    assert run_job(job_id, worker="w1") == "succeeded", job_row(job_id).error
    assert job_row(job_id).parameters == {"trainable": 1024 * 10 + 10, "frozen": 1_517_856}


def test_jobs_on_one_upload_in_a_worker_parse_it_once(
    sqlite_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study's trials on an uploaded dataset: the worker parses the file for the first
    job and keeps the arrays for the next (a large CSV takes seconds to parse); a file
    changed since (another size or time) is parsed again."""
    import core.uploads
    from worker import resources

    monkeypatch.setattr(resources, "DATASETS", resources.DatasetCache())
    parsed: list[Path] = []
    real = core.uploads.read_dataset

    def counted(path: Path, *args: Any) -> Any:
        parsed.append(path)
        return real(path, *args)

    monkeypatch.setattr(core.uploads, "read_dataset", counted)
    upload_id = make_upload(csv_bytes(rows=40))
    first = make_job(csv_spec(upload_id))
    second = make_job({**csv_spec(upload_id), "optimizer": {"name": "adam", "lr": 0.01}})
    assert run_job(first, worker="w1") == run_job(second, worker="w1") == "succeeded"
    assert len(parsed) == 1
    assert job_row(second).epoch == 2
    with session_scope() as session:
        path = get_artifacts().path(session.get_one(Upload, upload_id).path)
    path.write_bytes(csv_bytes(rows=48))
    assert run_job(make_job(csv_spec(upload_id)), worker="w1") == "succeeded"
    assert len(parsed) == 2

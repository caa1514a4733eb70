"""Exports made by the worker from a trained job's checkpoint, against a real database."""

from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch

from core import evaluate, load_model
from core.spec import JobSpec
from descent.settings import Settings
from store.artifacts import file_sha256, get_artifacts
from store.db import session_scope
from store.models import Checkpoint, Export, Job
from tests.worker.test_runner import make_job
from worker.exports import TOLERANCE, run_export, validation_inputs
from worker.runner import run_job

MLP = {
    "dataset": {"name": "iris", "seed": 0},
    "model": {"arch": "mlp", "hidden": [16, 8], "norm": "batch", "dropout": 0.1},
    "optimizer": {"name": "adam", "lr": 0.01},
    "training": {"epochs": 3, "batch_size": 16, "seed": 0},
}
CNN = {
    "dataset": {"name": "digits", "seed": 0, "val_fraction": 0.2},
    "model": {"arch": "cnn", "channels": [4, 8], "norm": "batch", "dropout": 0.1},
    "optimizer": {"name": "adam", "lr": 0.01},
    "training": {"epochs": 1, "batch_size": 64, "seed": 0},
}


def trained(spec: dict[str, Any]) -> tuple[str, Checkpoint]:
    job_id = make_job(spec)
    assert run_job(job_id, worker="w1") == "succeeded"
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        checkpoint = session.get_one(Checkpoint, job.best_checkpoint_id)
        session.expunge(checkpoint)
    return job_id, checkpoint


def export_of(job_id: str, checkpoint_id: str, fmt: str) -> Export:
    with session_scope() as session:
        export = Export(job_id=job_id, checkpoint_id=checkpoint_id, format=fmt)
        session.add(export)
        session.flush()
        export_id = export.id
    run_export(export_id)
    with session_scope() as session:
        export = session.get_one(Export, export_id)
        session.expunge(export)
    return export


def reference(spec: dict[str, Any], checkpoint: Checkpoint) -> tuple[torch.Tensor, torch.Tensor]:
    """The job's validation inputs and the PyTorch model's outputs on them."""
    parsed = JobSpec.model_validate(spec)
    model = load_model(parsed, get_artifacts().path(checkpoint.weights_path))
    x = validation_inputs(parsed, None)
    with torch.no_grad():
        return x, model(x)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_mlp_exports_with_its_parity_recorded(db_env: Settings, fmt: str) -> None:
    job_id, checkpoint = trained(MLP)
    export = export_of(job_id, checkpoint.id, fmt)
    assert export.status == "succeeded", export.error
    x, expected = reference(MLP, checkpoint)
    assert len(x) == 30  # iris: 150 rows, a fifth for validation
    assert export.parity["samples"] == 30 and export.parity["tolerance"] == TOLERANCE
    assert 0.0 <= export.parity["max_abs_diff"] < 1e-4
    path = get_artifacts().path(export.path)
    assert path.suffix == (".onnx" if fmt == "onnx" else ".pt")
    assert export.sha256 == file_sha256(path) and export.bytes == path.stat().st_size
    # The file alone reproduces the model's outputs.
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": x.numpy()})[0]
    else:
        got = torch.jit.load(str(path)).eval()(x).detach().numpy()
    assert np.abs(got - expected.numpy()).max() < 1e-4


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_cnn_exports_with_its_parity_recorded(sqlite_env: Settings, fmt: str) -> None:
    job_id, checkpoint = trained(CNN)
    export = export_of(job_id, checkpoint.id, fmt)
    assert export.status == "succeeded", export.error
    x, expected = reference(CNN, checkpoint)
    assert x.shape[1:] == (1, 8, 8) and export.parity["samples"] == len(x) == 360
    assert 0.0 <= export.parity["max_abs_diff"] < 1e-4
    path = get_artifacts().path(export.path)
    if fmt == "torchscript":
        loaded = torch.jit.load(str(path)).eval()
        # The exported model's loss is the job's best validation loss.
        spec = JobSpec.model_validate(CNN)
        with session_scope() as session:
            best = session.get_one(Job, job_id).best_value
        assert evaluate(spec, loaded)["val_loss"] == pytest.approx(best, abs=1e-5)


def test_a_damaged_checkpoint_fails_the_export_with_the_reason(sqlite_env: Settings) -> None:
    job_id, checkpoint = trained({**MLP, "training": {"epochs": 1, "batch_size": 16}})
    get_artifacts().path(checkpoint.weights_path).write_bytes(b"not safetensors")
    export = export_of(job_id, checkpoint.id, "onnx")
    assert export.status == "failed" and export.path is None
    assert export.error.startswith("the model could not be exported to onnx: ChecksumMismatch")
    assert not list((get_artifacts().root / "exports").glob("*"))


def test_a_retired_checkpoint_fails_the_export_with_the_reason(sqlite_env: Settings) -> None:
    job_id, checkpoint = trained({**MLP, "training": {"epochs": 1, "batch_size": 16}})
    with session_scope() as session:
        session.delete(session.get_one(Checkpoint, checkpoint.id))
    export = export_of(job_id, checkpoint.id, "torchscript")
    assert export.status == "failed"
    assert export.error == "its checkpoint no longer exists (retired by keep_top_k)"

"""Exports: a checkpoint's model written as ONNX or TorchScript, with a parity check.

The model is rebuilt from the checkpoint's weights and its job's spec (``core.load_model``),
exported, and the exported file itself (loaded back: onnxruntime for ONNX, ``torch.jit.load``
for TorchScript) is run on the job's whole validation split: its outputs must equal
PyTorch's within ``TOLERANCE`` (the largest absolute difference is recorded either way).
A model that cannot be exported, or whose export disagrees, fails with the reason.

ONNX goes through PyTorch's TorchScript-based exporter (``dynamo=False``: it needs only the
``onnx`` package, not onnxscript), with a dynamic batch dimension; TorchScript is a trace.
"""

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from celery import shared_task
from torch import nn

from core.checkpoint import load_model
from core.data import load_data
from core.spec import JobSpec
from core.train import input_layout, with_source
from descent.queue import EXPORT_TASK
from store.artifacts import file_sha256, get_artifacts
from store.db import session_scope
from store.models import Checkpoint, Export, ExportStatus, Job, utcnow
from worker.resources import job_resources

log = logging.getLogger(__name__)

TOLERANCE = 1e-4
# Rows run through a model at once during the parity check.
CHUNK = 256
SUFFIX = {"onnx": "onnx", "torchscript": "pt"}
# ONNX operator set of the exported graphs (onnxruntime 1.17 and later run it).
OPSET = 17


class ExportFailed(Exception):
    """The export or its parity check failed; the message is the reason shown to the user."""


def export_key(export_id: str, fmt: str) -> str:
    """Where an export's file is kept: outside the job's folder, whose files are checkpoints
    (a job's own sweeps remove files there that no checkpoint names)."""
    return f"exports/{export_id}.{SUFFIX[fmt]}"


def run_export(export_id: str) -> str:
    """Make the export and record its outcome: succeeded | failed | skipped."""
    with session_scope() as session:
        export = session.get(Export, export_id)
        if export is None:
            raise LookupError(f"export {export_id} does not exist")
        if export.status in ExportStatus.TERMINAL:
            return "skipped"
        export.status = ExportStatus.RUNNING  # a redelivery after a crash redoes it
        fmt = export.format
        checkpoint = session.get(Checkpoint, export.checkpoint_id)
        job = session.get_one(Job, export.job_id)
        spec, owner = job.spec, job.owner
        weights = (checkpoint.weights_path, checkpoint.sha256) if checkpoint else None
    if weights is None:
        return _fail(export_id, "its checkpoint no longer exists (retired by keep_top_k)")
    artifacts = get_artifacts()
    key = export_key(export_id, fmt)
    target = artifacts.path(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    parity: dict[str, Any] | None = None
    try:
        parsed = JobSpec.model_validate(spec)
        resources = job_resources(parsed, owner, artifacts)
        with artifacts.fetch(weights[0], weights[1]) as path:
            model = load_model(parsed, path)
        x = validation_inputs(parsed, resources)
        export_model(model, x[: min(len(x), 8)], fmt, target)
        parity = {"max_abs_diff": None, "tolerance": TOLERANCE, "samples": len(x)}
        parity["max_abs_diff"] = max_abs_diff(model, x, fmt, target)
        if not parity["max_abs_diff"] <= TOLERANCE:  # NaN fails too
            raise ExportFailed(
                f"parity check failed: the {fmt} model's outputs differ from PyTorch's by up "
                f"to {parity['max_abs_diff']:.3g} on the validation split (tolerance "
                f"{TOLERANCE:g})"
            )
        sha256 = file_sha256(target)
        size = target.stat().st_size
        stored = artifacts.publish(target, sha256)
    except Exception as exc:  # noqa: BLE001 - every failure is the export's, with its reason
        target.unlink(missing_ok=True)
        if not isinstance(exc, ExportFailed):
            log.warning("export %s failed", export_id, exc_info=True)
        reason = str(exc) if isinstance(exc, ExportFailed) else _reason(fmt, exc)
        return _fail(export_id, reason, parity)
    with session_scope() as session:
        export = session.get_one(Export, export_id)
        export.status = ExportStatus.SUCCEEDED
        export.parity = parity
        export.path, export.bytes, export.sha256 = stored, size, sha256
        export.error = None
        export.finished_at = utcnow()
    return ExportStatus.SUCCEEDED


def _reason(fmt: str, exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    detail = text[0] if text else exc.__class__.__name__
    return f"the model could not be exported to {fmt}: {exc.__class__.__name__}: {detail}"


def _fail(export_id: str, error: str, parity: dict[str, Any] | None = None) -> str:
    with session_scope() as session:
        export = session.get_one(Export, export_id)
        export.status = ExportStatus.FAILED
        export.error = error
        export.parity = parity
        export.finished_at = utcnow()
    return ExportStatus.FAILED


def validation_inputs(spec: JobSpec, resources: Any) -> torch.Tensor:
    """The job's validation inputs, laid out and scaled as its model was trained on them."""
    spec = with_source(spec, resources)
    images, scaling = input_layout(spec)
    data = load_data(
        spec.dataset, images=images, resources=resources, task=spec.task, scaling=scaling
    )
    x, _ = data.split("val")
    return x.float()


def export_model(model: nn.Module, example: torch.Tensor, fmt: str, target: Path) -> None:
    """Write the model to ``target`` (atomically: a temp file, then renamed)."""
    temp = target.with_name(f".{target.name}.tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notes
            if fmt == "onnx":
                torch.onnx.export(
                    model,
                    (example,),
                    str(temp),
                    dynamo=False,
                    opset_version=OPSET,
                    input_names=["input"],
                    output_names=["output"],
                    dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                )
            else:
                traced = torch.jit.trace(model, example, check_trace=False)
                torch.jit.save(traced, str(temp))
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


@torch.no_grad()
def max_abs_diff(model: nn.Module, x: torch.Tensor, fmt: str, path: Path) -> float:
    """The largest absolute difference between PyTorch's outputs and those of the exported
    file, over every row of x."""
    if fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )

        def run(xb: torch.Tensor) -> np.ndarray:
            return np.asarray(session.run(None, {"input": xb.numpy()})[0])
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation note
            loaded = torch.jit.load(str(path), map_location="cpu").eval()

        def run(xb: torch.Tensor) -> np.ndarray:
            return loaded(xb).numpy()

    worst = 0.0
    for start in range(0, len(x), CHUNK):
        xb = x[start : start + CHUNK]
        expected = model(xb).numpy()
        got = run(xb)
        if got.shape != expected.shape:
            raise ExportFailed(
                f"parity check failed: the exported model answers shape {list(got.shape)} "
                f"where PyTorch's answers {list(expected.shape)}"
            )
        diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        worst = max(worst, float(np.nanmax(diff)) if diff.size else 0.0)
        if np.isnan(diff).any():
            return float("nan")
    return worst


@shared_task(name=EXPORT_TASK)
def export(export_id: str) -> str:
    outcome = run_export(export_id)
    log.info("export %s: %s", export_id, outcome)
    return outcome

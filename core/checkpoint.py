"""Checkpoint files.

Two files per checkpoint:
- `<stem>.safetensors`: the model's weights, the file a user downloads. Its `__metadata__`
  holds the spec hash, the epoch, the monitored metric and its value, and the spec itself, so
  the file alone is enough to rebuild the model (see load_model).
- `<stem>.state.pt`: the resume state (optimizer, schedule, RNG, epoch, early-stopping
  counters). Written with torch.save but only ever read with torch.load(weights_only=True),
  so it holds tensors and plain Python values only, and reading it runs no pickled code.

Both are written atomically: a temp file in the same folder, flushed and fsynced, then
os.replace, so a worker killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from core.errors import TrainingError
from core.models import build_model
from core.spec import DatasetInfo, JobSpec

WEIGHTS_SUFFIX = ".safetensors"
STATE_SUFFIX = ".state.pt"


@dataclass
class CheckpointFiles:
    weights_path: Path
    state_path: Path
    bytes: int  # size of the weights file
    sha256: str  # of the weights file


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def weights_metadata(
    spec: JobSpec,
    epoch: int,
    monitor: str,
    value: float,
    facts: tuple[str, str] | None = None,
) -> dict[str, str]:
    """facts: the spec's hash and JSON when the caller holds them (a run's every checkpoint)."""
    spec_hash, spec_json = facts or (spec.spec_hash(), spec.model_dump_json())
    return {
        "format": "pt",
        "spec_hash": spec_hash,
        "epoch": str(epoch),
        "monitor": monitor,
        "value": repr(float(value)),
        "spec": spec_json,
    }


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    with safetensors.safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def state_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise TrainingError(f"cannot read resume state {path}: {exc}") from exc


def load_weights(
    model: nn.Module, path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> None:
    tensors = safetensors.torch.load_file(str(path), device=str(device))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise TrainingError(f"weights in {path} do not fit the spec's model: {exc}") from exc


def load_model(
    spec: JobSpec | dict[str, Any] | None,
    weights_path: str | os.PathLike[str],
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Rebuild the spec's model and load a weights file into it, in eval mode.

    spec=None takes the spec stored in the file's metadata. An uploaded dataset's shape and
    a backbone job's spec come from the metadata too, so the file alone is enough; a
    torchvision backbone is built without fetching its pretrained weights (the file has
    them all).
    """
    metadata = read_metadata(weights_path)
    if spec is None:
        stored = metadata.get("spec")
        if stored is None:
            raise TrainingError(f"{weights_path} holds no spec: pass the job spec")
        spec = json.loads(stored)
    if not isinstance(spec, JobSpec):
        spec = JobSpec.model_validate(spec)
    if spec.source is None and "backbone_spec" in metadata:
        spec.with_source(JobSpec.model_validate_json(metadata["backbone_spec"]))
    info = None
    if "dataset_info" in metadata:
        info = DatasetInfo.from_upload(json.loads(metadata["dataset_info"]))
    model = build_model(spec, info).to(device)
    load_weights(model, weights_path, device)
    return model.eval()

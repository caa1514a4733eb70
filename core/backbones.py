"""Backbones: loading a pretrained body's weights, freezing and unfreezing it.

A torchvision backbone's weights come from an upload (Resources.weights) or torchvision's
named weights (from the TORCH_HOME cache, or downloaded); an earlier job's encoder comes
from that job's best checkpoint (Resources.backbone_jobs). Only the body's weights are
taken: the head is new, for this task.

Freezing (notes 4.9, "freezing the feature extractor"): the body's parameters stop
requiring gradients, stay out of the optimizer, and its batch-norm layers stay in eval
mode, so that their running statistics, which are part of what was learnt, do not drift
towards the new data's while only the head trains.
"""

from __future__ import annotations

from urllib.error import URLError

import safetensors.torch
import torch
from torch import nn

from core.errors import InvalidUpload, TrainingError
from core.resources import Resources
from core.spec import JobBackbone, JobSpec, TorchvisionBackbone
from core.uploads import LISTED, read_weights, weights_mismatches


def load_backbone(model: nn.Module, spec: JobSpec, resources: Resources | None) -> None:
    """Load the backbone's pretrained weights into model.body (nothing for weights none)."""
    backbone = spec.backbone
    if backbone is None:
        return
    body = model.body
    assert isinstance(body, nn.Module)
    if isinstance(backbone, JobBackbone):
        _, path = (resources or Resources()).backbone_job(backbone.from_job)
        tensors = safetensors.torch.load_file(str(path), device="cpu")
        prefix = "body."
        own = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        load_into(body, own, f"the encoder of job {backbone.from_job!r}")
        return
    pretrained = torchvision_weights(backbone, resources)
    if pretrained is not None:
        load_into(body, pretrained, f"the {backbone.arch} weights")


def torchvision_weights(
    backbone: TorchvisionBackbone, resources: Resources | None
) -> dict[str, torch.Tensor] | None:
    """The state dict the backbone starts from, or None for weights none."""
    arch = backbone.arch
    upload = backbone.upload_id
    if upload is not None:
        path = (resources or Resources()).weights_file(upload)
        try:
            tensors, _ = read_weights(path)
        except InvalidUpload as exc:
            raise TrainingError(f"weights upload {upload!r}: {exc}") from None
        problems = weights_mismatches(tensors, arch)
        if problems:
            raise TrainingError(
                f"weights upload {upload!r} does not fit {arch}: " + " | ".join(problems)
            )
        return tensors
    if backbone.weights != "default":
        return None
    import torch.hub
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        # A file in TORCH_HOME's hub cache is used as it is; a download is checked against
        # the hash in its name; either way it is read with weights_only=True.
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except (URLError, OSError) as exc:
        raise TrainingError(
            f"weights for {arch} are not cached in TORCH_HOME ({torch.hub.get_dir()}) and "
            f"cannot be downloaded: {exc}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a corrupt cached file fails in many ways
        raise TrainingError(f"the cached weights for {arch} cannot be read: {exc}") from None


def load_into(module: nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Load every entry of module's state dict from tensors (extra entries are ignored:
    a classifier's or decoder's); a missing entry or a different shape is a TrainingError
    listing the first few. Batch norm's num_batches_tracked may be missing."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in tensors and not k.endswith("num_batches_tracked")]
    shapes = [
        f"{k}: {tuple(tensors[k].shape)} there, {tuple(v.shape)} here"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    problems = []
    for kind, items in (("missing", missing), ("of another shape", shapes)):
        if items:
            more = f" (and {len(items) - LISTED} more)" if len(items) > LISTED else ""
            problems.append(f"{len(items)} {kind}: {'; '.join(items[:LISTED])}{more}")
    if problems:
        raise TrainingError(f"{what} do not fit this model: " + " | ".join(problems))
    with torch.no_grad():
        for key, value in expected.items():
            if key in tensors:
                value.copy_(tensors[key])  # to this model's dtype and device


def set_frozen(body: nn.Module, frozen: bool) -> list[nn.Module]:
    """Freeze or unfreeze the body's parameters; return its batch-norm layers, which the
    training loop keeps in eval mode while frozen."""
    for p in body.parameters():
        p.requires_grad_(not frozen)
    if not frozen:
        return []
    return [m for m in body.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

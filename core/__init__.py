"""Descent's PyTorch training core.

`import core` and `import core.spec` do not import torch (the API validates specs without
it); the training names below load lazily on first use: `from core import fit`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from core.diagnosis import diagnose
from core.errors import InvalidUpload, NonFiniteLoss, TrainingError
from core.results import EpochRecord, FitResult, StopInfo
from core.spec import JobSpec

_LAZY = {
    "fit": "core.train",
    "evaluate": "core.train",
    "Trainer": "core.train",
    "TrainerHooks": "core.train",
    "Hooks": "core.train",
    "load_model": "core.checkpoint",
    "read_metadata": "core.checkpoint",
    "CheckpointFiles": "core.checkpoint",
    "build_model": "core.models",
    "load_data": "core.data",
    "Resources": "core.resources",
    "inspect_dataset": "core.uploads",
    "inspect_weights": "core.uploads",
}

__all__ = [
    "CheckpointFiles",
    "EpochRecord",
    "FitResult",
    "Hooks",
    "InvalidUpload",
    "JobSpec",
    "NonFiniteLoss",
    "Resources",
    "StopInfo",
    "Trainer",
    "TrainerHooks",
    "TrainingError",
    "build_model",
    "diagnose",
    "evaluate",
    "fit",
    "inspect_dataset",
    "inspect_weights",
    "load_data",
    "load_model",
    "read_metadata",
]

if TYPE_CHECKING:
    from core.checkpoint import CheckpointFiles, load_model, read_metadata
    from core.data import load_data
    from core.models import build_model
    from core.resources import Resources
    from core.train import Hooks, Trainer, TrainerHooks, evaluate, fit
    from core.uploads import inspect_dataset, inspect_weights


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'core' has no attribute {name!r}")

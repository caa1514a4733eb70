"""Test-data builders for the core tests: specs and tiny problems, in one place."""

from __future__ import annotations

import copy
from typing import Any

from core.spec import JobSpec


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge patch into a copy of base (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def spec_dict(**patch: Any) -> dict[str, Any]:
    """A small, fast job spec as a dict: a 16-unit MLP on iris, 3 epochs on the CPU."""
    base = {
        "dataset": {"name": "iris"},
        "model": {"hidden": [16]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "training": {"epochs": 3, "batch_size": 16, "device": "cpu"},
    }
    return merge(base, patch)


def make_spec(**patch: Any) -> JobSpec:
    return JobSpec.model_validate(spec_dict(**patch))

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


def colour_images(n: int = 96, size: int = 32, seed: int = 0) -> tuple[Any, Any]:
    """A tiny generated image set: (n, size, size, 3) uint8 images whose class (0, 1, 2) is
    the colour channel that is brighter, and the labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    rng.shuffle(y)
    x = rng.integers(0, 100, (n, size, size, 3)).astype(np.uint8)
    for i in range(n):
        x[i, :, :, y[i]] += 120
    return x, y


def write_zip(path: Any, entries: dict[str, bytes], *, links: dict[str, str] | None = None) -> Any:
    """A zip archive of the given members (names as written, unchecked), plus symbolic-link
    members pointing at the given targets."""
    import stat
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def finished_job(spec: dict[str, Any], directory: Any, **trainer: Any) -> tuple[JobSpec, Any]:
    """Train a spec and keep its best checkpoint: (spec, best weights file), as the worker
    hands a finished job to a later one as its backbone."""
    from pathlib import Path

    from core.train import Trainer, TrainerHooks

    class SaveBest(TrainerHooks):
        path: Path | None = None

        def on_epoch_end(self, trainer: Trainer, record: Any) -> None:
            if record.is_best:
                self.path = trainer.save_checkpoint(directory, "best").weights_path

    job = JobSpec.model_validate(spec)
    hooks = SaveBest()
    Trainer(job, hooks=hooks, **trainer).setup().train()
    assert hooks.path is not None
    return job, hooks.path

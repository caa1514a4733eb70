"""What a job needs beyond its spec: uploaded files and earlier jobs' checkpoints.

The core knows nothing of the database: the worker looks the spec's references up (the
dataset upload, the weights upload, the backbone job) and hands the files over in a
Resources; a notebook can build one by hand. A reference that is missing here is a
TrainingError naming it, raised when the job starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import TrainingError

if TYPE_CHECKING:
    from core.spec import JobSpec


@dataclass
class Resources:
    datasets: dict[str, Path] = field(default_factory=dict)  # upload id → the uploaded file
    weights: dict[str, Path] = field(default_factory=dict)  # upload id → the weights file
    # job id → (its spec, its best checkpoint's weights file)
    backbone_jobs: dict[str, tuple[JobSpec, Path]] = field(default_factory=dict)

    def dataset(self, upload_id: str) -> Path:
        return _found(self.datasets, upload_id, f"dataset upload {upload_id!r}")

    def weights_file(self, upload_id: str) -> Path:
        return _found(self.weights, upload_id, f"weights upload {upload_id!r}")

    def backbone_job(self, job_id: str) -> tuple[JobSpec, Path]:
        found = self.backbone_jobs.get(job_id)
        if found is None:
            raise TrainingError(
                f"the backbone job {job_id!r} or its best checkpoint is not available"
            )
        spec, path = found
        if not Path(path).is_file():
            raise TrainingError(f"the best checkpoint of backbone job {job_id!r} is missing")
        return spec, Path(path)


def _found(files: dict[str, Path], key: str, what: str) -> Path:
    path = files.get(key)
    if path is None:
        raise TrainingError(f"the {what} is not available")
    if not Path(path).is_file():
        raise TrainingError(f"the file of the {what} is missing")
    return Path(path)

"""What a job needs beyond its spec: uploaded files and earlier jobs' checkpoints.

The core knows nothing of the database: the worker looks the spec's references up (the
dataset upload, the weights upload, the backbone job) and hands the files over in a
Resources; a notebook can build one by hand. A reference that is missing here is a
TrainingError naming it, raised when the job starts.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import TrainingError

if TYPE_CHECKING:
    from core.spec import JobSpec


class DatasetCache:
    """Datasets as read from their source (``core.data.read_source``: the arrays before any
    split) and as split and scaled (``core.data.load_data``), kept for the next job of the
    process that reads the same one: a study's trials on one worker read and split their
    dataset once, not once each (a large uploaded CSV takes seconds to parse). Kept arrays
    are read-only; the least recently used go first, past ``entries`` (by default two
    datasets, each as read and as split) or ``max_bytes`` in all (a larger one is not
    kept). Pickled (to the ranks of a job on several processes), it arrives empty."""

    def __init__(self, entries: int = 4, max_bytes: int = 1 << 30) -> None:
        self.entries, self.max_bytes = entries, max_bytes
        self._kept: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any | None:
        with self._lock:
            found = self._kept.get(key)
            if found is None:
                return None
            self._kept.move_to_end(key)
            return found[0]

    def put(self, key: Any, value: Any, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            return
        with self._lock:
            self._kept[key] = (value, nbytes)
            self._kept.move_to_end(key)
            while len(self._kept) > self.entries or self._bytes() > self.max_bytes:
                self._kept.popitem(last=False)

    def _bytes(self) -> int:
        return sum(n for _, n in self._kept.values())

    def __reduce__(self) -> tuple[Any, ...]:
        return (DatasetCache, (self.entries, self.max_bytes))


@dataclass
class Resources:
    datasets: dict[str, Path] = field(default_factory=dict)  # upload id → the uploaded file
    weights: dict[str, Path] = field(default_factory=dict)  # upload id → the weights file
    # job id → (its spec, its best checkpoint's weights file)
    backbone_jobs: dict[str, tuple[JobSpec, Path]] = field(default_factory=dict)
    # The process's datasets already read (a worker's, shared by its jobs); None: read each.
    read_cache: DatasetCache | None = None

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

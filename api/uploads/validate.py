"""Which check each kind of upload gets. The checks themselves are the core's
(``core.uploads``): one implementation, the same one the worker reads the files with, so a
file accepted here is a file a job can train on. Nothing there unpickles or executes what a
user sent, and nothing is extracted to disk.

- datasets: ``inspect_dataset`` (CSV with a named target column, NPZ with arrays ``x`` and
  ``y``, or a zip of an image folder with a subfolder per class); the format is told from
  the file's content, never from the name the client gave it.
- weights: ``inspect_weights`` against the named torchvision architecture (safetensors, or a
  PyTorch state dict read only with ``torch.load(weights_only=True)``). It imports torch, so
  it is imported here only when a weights file arrives: the API starts without torch.

Both run in a child process of their own (``api.uploads.inspect``), never in the API's.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InvalidUpload
from core.spec import TORCHVISION_BODIES

# The stored file's suffix for each format.
SUFFIXES = {
    "csv": "csv",
    "npz": "npz",
    "imagefolder": "zip",
    "safetensors": "safetensors",
    "pytorch": "pt",
}
ARCHITECTURES = tuple(TORCHVISION_BODIES)

__all__ = ["ARCHITECTURES", "Checked", "InvalidUpload", "check_dataset", "check_weights"]


@dataclass(frozen=True)
class Checked:
    format: str  # csv | npz | imagefolder | safetensors | pytorch
    info: dict[str, Any]  # the core's metadata (what a job spec is checked against)

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.format]


class FormFieldError(ValueError):
    """A form field the file needs is missing or wrong, or one it does not take is there."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field


def dataset_format(path: Path) -> str:
    from core.uploads import sniff_format

    return sniff_format(path)


def check_dataset(
    path: Path, *, target: str | None, max_unpacked: int, max_decoded: int
) -> Checked:
    from core.uploads import inspect_dataset

    format = dataset_format(path)
    if format == "csv" and not target:
        raise FormFieldError(
            "target", "a CSV dataset needs the name of its target column in the form field 'target'"
        )
    if format != "csv" and target:
        raise FormFieldError(
            "target", f"target names a CSV column; this file is a {format} dataset"
        )
    meta = inspect_dataset(
        path, format, target, max_unpacked_bytes=max_unpacked, max_decoded_bytes=max_decoded
    )
    return Checked(meta["format"], meta)


def check_weights(path: Path, *, arch: str | None) -> Checked:
    if not arch:
        raise FormFieldError(
            "arch", f"name the weights' architecture in the form field 'arch': one of {_archs()}"
        )
    if arch not in TORCHVISION_BODIES:
        raise FormFieldError("arch", f"unknown architecture {arch[:100]!r}: one of {_archs()}")
    from core.uploads import inspect_weights  # torch, from here on

    meta = inspect_weights(path, arch)
    return Checked(meta["format"], meta)


def _archs() -> str:
    return ", ".join(ARCHITECTURES)

"""The artifact store: a local folder (a shared volume in production).

Stored names are always made by the server: ``<job id>/<stem>.<suffix>``.
"""

import hashlib
import hmac
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from descent.settings import get_settings


class LocalArtifacts:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def job_dir(self, job_id: str) -> Path:
        path = self.root / job_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    def path(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"artifact path outside the store: {relative!r}")
        return path

    def delete(self, relative: str) -> None:
        self.path(relative).unlink(missing_ok=True)


def get_artifacts() -> LocalArtifacts:
    settings = get_settings()
    assert settings.artifacts_dir is not None
    return LocalArtifacts(settings.artifacts_dir)


def atomic_copy(source: BinaryIO, destination: Path, chunk: int = 1 << 20) -> str:
    """Copy a file object to ``destination`` atomically; return the sha256 of what was written.

    A temp file in the same folder, fsynced, then ``os.replace``: a crash mid-copy leaves no
    half file under the final name (only a hidden temp file, which sweeps remove).
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    folder, prefix = destination.parent, f".{destination.name}."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            source.seek(0)
            while block := source.read(chunk):
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, destination)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def sha256_matches(path: Path, expected: str) -> bool:
    """Whether the file's sha256 is the one recorded for it (read in blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return hmac.compare_digest(digest.hexdigest(), expected)

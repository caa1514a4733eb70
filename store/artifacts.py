"""The artifact store: checkpoints (weights and resume state) and uploads.

Two backends behind one small interface, chosen by ``settings.artifacts_url``:

- ``LocalArtifacts`` (the default, ``artifacts_url`` empty): a folder, ``artifacts_dir``;
  every process that serves or trains must see the same folder (one machine, or a volume
  they share).
- ``S3Artifacts`` (``artifacts_url = s3://bucket/prefix``, in ``store.s3``): any
  S3-compatible object store; each process keeps only a local scratch folder of its own
  (``artifacts_dir``), where files are written before they are stored and read after they
  are fetched. Nothing local is shared: workers may run on many hosts.

Stored names (keys) are always made by the server: ``<job id>/<stem>.<suffix>`` and
``uploads/<kind>/<id>.<suffix>``. A file is written locally under ``path(key)``, then
``publish``-ed; readers get a local copy with ``fetch`` (temporary) or ``cached``
(kept: stored files never change under a key), the sha256 checked when one is recorded.
"""

import hashlib
import hmac
import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from descent.settings import Settings, get_settings

CHUNK = 1 << 20


class ChecksumMismatch(ValueError):
    """A stored file's bytes do not hash to the sha256 recorded for them."""


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    modified: float  # seconds since the epoch
    etag: str  # the store's own tag of this version of the file (not the sha256)


class Artifacts(Protocol):
    """What every backend offers (see the module's docstring)."""

    root: Path
    remote: bool

    def job_dir(self, job_id: str) -> Path: ...
    def relative(self, path: Path) -> str: ...
    def path(self, relative: str) -> Path: ...
    def publish(self, path: Path, sha256: str | None = None) -> str: ...
    def write(self, relative: str, data: bytes, sha256: str | None = None) -> str: ...
    def fetch(self, key: str, sha256: str | None = None) -> AbstractContextManager[Path]: ...
    def cached(self, key: str, sha256: str | None = None) -> Path: ...
    def keys(self, prefix: str) -> list[str]: ...
    def info(self, key: str) -> ObjectInfo | None: ...
    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...
    def presigned_url(self, key: str, filename: str, expires: int) -> str | None: ...
    def delete(self, key: str) -> None: ...


class LocalArtifacts:
    """The local folder: a file's key is its path under ``root``."""

    remote = False

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

    def publish(self, path: Path, sha256: str | None = None) -> str:
        """The key of a file written under ``root``: here it is stored already."""
        return self.relative(path)

    def write(self, relative: str, data: bytes, sha256: str | None = None) -> str:
        """Store ``data`` under ``relative``: written atomically and fsynced; its key."""
        atomic_copy(io.BytesIO(data), self.path(relative))
        return relative

    @contextmanager
    def fetch(self, key: str, sha256: str | None = None) -> Iterator[Path]:
        yield self.cached(key, sha256)

    def cached(self, key: str, sha256: str | None = None) -> Path:
        path = self.path(key)
        if sha256 is not None and path.is_file() and not sha256_matches(path, sha256):
            raise ChecksumMismatch(f"{key} does not match its recorded sha256")
        return path

    def keys(self, prefix: str) -> list[str]:
        folder = self.path(prefix)
        if not folder.is_dir():
            return []
        return [self.relative(p) for p in folder.iterdir() if p.is_file()]

    def info(self, key: str) -> ObjectInfo | None:
        try:
            stat = self.path(key).stat()
        except (OSError, ValueError):
            return None
        return ObjectInfo(stat.st_size, stat.st_mtime, f"{stat.st_ino}-{stat.st_mtime_ns}")

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes from ``start`` to ``end`` (inclusive; None: the end), in blocks."""
        with open(self.path(key), "rb") as f:
            f.seek(start)
            left = None if end is None else end - start + 1
            while left is None or left > 0:
                block = f.read(CHUNK if left is None else min(CHUNK, left))
                if not block:
                    return
                if left is not None:
                    left -= len(block)
                yield block

    def presigned_url(self, key: str, filename: str, expires: int) -> str | None:
        return None  # a folder has no URL of its own: the API serves the file

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def get_artifacts(settings: Settings | None = None) -> Artifacts:
    settings = settings or get_settings()
    assert settings.artifacts_dir is not None
    if settings.artifacts_url:
        from store.s3 import S3Artifacts

        return S3Artifacts.from_settings(settings)
    return LocalArtifacts(settings.artifacts_dir)


def atomic_copy(source: BinaryIO, destination: Path, chunk: int = CHUNK) -> None:
    """Copy a file object to ``destination`` atomically (not hashed: the callers hold the
    sha256 already, when they need one).

    A temp file in the same folder, fsynced, then ``os.replace``: a crash mid-copy leaves no
    half file under the final name (only a hidden temp file, which sweeps remove).
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    folder, prefix = destination.parent, f".{destination.name}."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            source.seek(0)
            while block := source.read(chunk):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, destination)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sha256_matches(path: Path, expected: str) -> bool:
    """Whether the file's sha256 is the one recorded for it (read in blocks)."""
    return hmac.compare_digest(file_sha256(path), expected)

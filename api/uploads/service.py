"""Uploads: checking, storing, listing and deleting an owner's datasets and weights."""

import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db import on_commit
from api.errors import InvalidParameter, NotFound, TooLarge
from api.uploads.inspect import inspect_upload
from api.uploads.validate import Checked, FormFieldError, InvalidUpload
from descent.settings import Settings
from store.artifacts import get_artifacts
from store.models import Upload, new_id
from store.users import limits_for, uploaded_bytes

logger = logging.getLogger("api")

KINDS = ("dataset", "weights")
# An upload being checked is a hidden file with this suffix, in its kind's upload folder.
STAGING_SUFFIX = ".checking"


def remaining_bytes(session: Session, owner: str, settings: Settings) -> int:
    limits = limits_for(session, owner, settings)
    return max(0, limits.upload_bytes - uploaded_bytes(session, owner))


def store_upload(
    session: Session,
    *,
    owner: str,
    kind: str,
    file: BinaryIO,
    filename: str | None,
    name: str | None,
    settings: Settings,
    target: str | None = None,
    arch: str | None = None,
) -> Upload:
    """Check the file with the core's inspectors, store it once under a name of the
    server's making with its sha256, and add its row (committed with the request).

    The file is copied into the upload folder first (the inspectors read a path) under a
    name of its own, and renamed to its stored name only once it passed; a refused file is
    deleted before the answer goes out, and one whose process was killed is swept away by
    the next upload or the next start (sweep_staging).
    """
    assert kind in KINDS
    file.seek(0, 2)
    size = file.tell()
    if size == 0:
        raise InvalidParameter.one(("body", "file"), "the file is empty")
    _check_quota(session, owner, settings, size)  # before the work; again, locked, after it
    upload_id = new_id()
    artifacts = get_artifacts()
    sweep_staging(settings.artifacts_dir)
    staging = artifacts.path(f"uploads/{kind}/.{upload_id}{STAGING_SUFFIX}")
    with _staged(staging) as fd:
        sha256 = _copy(file, fd)
        checked = _check(kind, staging, target=target, arch=arch, settings=settings)
        relative = f"uploads/{kind}/{upload_id}.{checked.suffix}"
        path = artifacts.path(relative)
        os.replace(staging, path)
    try:
        _check_quota(session, owner, settings, size, lock=True)
        row = Upload(
            id=upload_id,
            owner=owner,
            kind=kind,
            name=name,
            filename=display_name(filename),
            format=checked.format,
            path=relative,
            bytes=size,
            sha256=sha256,
            info=checked.info,
        )
        session.add(row)
        session.flush()
        artifacts.publish(path, sha256)  # into the object store, when there is one
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return row


def _check(
    kind: str, path: Path, *, target: str | None, arch: str | None, settings: Settings
) -> Checked:
    """The core's verdict on the file, reached in a child process with a memory limit: 422
    naming the form field and the reason (413 when the child runs out of memory)."""
    try:
        return inspect_upload(
            kind,
            path,
            target=target,
            arch=arch,
            max_unpacked_bytes=settings.max_unpacked_bytes,
            max_decoded_bytes=settings.upload_max_decoded_bytes,
        )
    except FormFieldError as exc:
        raise InvalidParameter.one(("body", exc.field), str(exc)) from None
    except InvalidUpload as exc:
        raise InvalidParameter.one(("body", "file"), str(exc)) from None


@contextmanager
def _staged(path: Path) -> Iterator[int]:
    """A new file at ``path``, open for writing and locked while the upload is checked
    (a lock the sweep cannot take marks a live upload; a killed one's goes with its
    process); deleted on the way out unless it was moved to its stored name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:
            break
        os.close(fd)  # swept away between its creation and its lock: make it again
    try:
        yield fd
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)  # the lock goes last


def _copy(source: BinaryIO, fd: int, chunk: int = 1 << 20) -> str:
    """Copy the upload into the open file; the sha256 of what was written."""
    digest = hashlib.sha256()
    source.seek(0)
    with os.fdopen(os.dup(fd), "wb") as out:
        while block := source.read(chunk):
            digest.update(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def sweep_staging(root: Path | None) -> list[Path]:
    """Delete what uploads killed mid-check left in the upload folders (their staging
    files, and the temp files of earlier versions): every hidden file there whose lock can
    be taken. The API sweeps at start and before each upload."""
    removed: list[Path] = []
    for path in root.glob("uploads/*/.*") if root else ():
        if not path.name.endswith((STAGING_SUFFIX, ".tmp")):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)
            removed.append(path)
        except OSError:  # BlockingIOError: a live upload's
            continue
        finally:
            os.close(fd)
    if removed:
        logger.info("swept %d staging files of interrupted uploads", len(removed))
    return removed


def _check_quota(
    session: Session, owner: str, settings: Settings, size: int, *, lock: bool = False
) -> None:
    limits = limits_for(session, owner, settings, lock=lock)
    used = uploaded_bytes(session, owner)
    if used + size > limits.upload_bytes:
        raise TooLarge(
            f"this upload ({size} bytes) would bring this account's uploads to "
            f"{used + size} bytes, over its limit of {limits.upload_bytes}; delete some first"
        )


def display_name(filename: str | None) -> str | None:
    """The client's file name, for display only: its last path part, printable, short."""
    if not filename:
        return None
    base = re.split(r"[\\/]", filename)[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:200].strip()
    return base or None


def get_upload(session: Session, upload_id: str, *, owner: str, kind: str) -> Upload:
    row = session.scalars(
        select(Upload).where(Upload.id == upload_id, Upload.owner == owner, Upload.kind == kind)
    ).one_or_none()
    if row is None:
        raise NotFound(f"{kind} {upload_id} not found")
    return row


def list_uploads(session: Session, *, owner: str, kind: str, limit: int) -> list[Upload]:
    return list(
        session.scalars(
            select(Upload)
            .where(Upload.owner == owner, Upload.kind == kind)
            .order_by(Upload.created_at.desc(), Upload.id.desc())
            .limit(limit)
        )
    )


def delete_upload(session: Session, upload_id: str, *, owner: str, kind: str) -> None:
    row = get_upload(session, upload_id, owner=owner, kind=kind)
    session.delete(row)
    session.flush()
    # The file goes once the row's deletion is committed, never before.
    on_commit(session, partial(get_artifacts().delete, row.path))

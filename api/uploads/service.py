"""Uploads: checking, storing, listing and deleting an owner's datasets and weights."""

import re
from functools import partial
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db import on_commit
from api.errors import InvalidParameter, NotFound, TooLarge
from api.uploads.validate import InvalidUpload, check_dataset, check_weights
from descent.settings import Settings
from store.artifacts import atomic_copy, get_artifacts
from store.models import Upload, new_id
from store.users import limits_for, uploaded_bytes

KINDS = ("dataset", "weights")


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
) -> Upload:
    """Check the file, copy it into the artifact store under a name of the server's making,
    and add its row (committed with the request)."""
    assert kind in KINDS
    file.seek(0, 2)
    size = file.tell()
    if size == 0:
        raise InvalidParameter.one(("body", "file"), "the file is empty")
    limits = limits_for(session, owner, settings, lock=True)
    used = uploaded_bytes(session, owner)
    if used + size > limits.upload_bytes:
        raise TooLarge(
            f"this upload ({size} bytes) would bring this account's uploads to "
            f"{used + size} bytes, over its limit of {limits.upload_bytes}; delete some first"
        )
    try:
        if kind == "dataset":
            checked = check_dataset(file, size, max_unpacked=settings.max_unpacked_bytes)
        else:
            checked = check_weights(file, size)
    except InvalidUpload as exc:
        raise InvalidParameter.one(("body", "file"), str(exc)) from None
    upload_id = new_id()
    relative = f"uploads/{kind}/{upload_id}.{checked.format}"
    artifacts = get_artifacts()
    path = artifacts.path(relative)
    sha256 = atomic_copy(file, path)
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
    try:
        session.flush()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return row


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

"""Checkpoints: listing a job's kept checkpoints and locating their weights files."""

import hashlib
import hmac
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from api import objects
from api.checkpoints.schemas import CheckpointPublic
from api.errors import Gone, NotFound
from api.jobs.service import get_job
from store.artifacts import ObjectInfo, get_artifacts
from store.models import Checkpoint, Job


@dataclass(frozen=True)
class Download:
    path: Path | None
    stat: os.stat_result | None  # taken once, so the response never stats a file that is gone
    filename: str
    sha256: str
    # In an object store (artifacts_url s3://...): the file's key and what the store says of
    # it (path and stat are then None; api.objects serves it).
    key: str | None = None
    info: ObjectInfo | None = None


def list_checkpoints(session: Session, job_id: str, *, owner: str) -> list[CheckpointPublic]:
    job = get_job(session, job_id, owner=owner)
    checkpoints = session.scalars(
        select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(Checkpoint.epoch)
    ).all()
    last_id = checkpoints[-1].id if checkpoints else None
    return [
        CheckpointPublic.from_row(
            c, is_best=c.id == job.best_checkpoint_id, is_last=c.id == last_id
        )
        for c in checkpoints
    ]


def best_checkpoint(session: Session, job_id: str, *, owner: str) -> Download:
    job = get_job(session, job_id, owner=owner)
    if job.best_checkpoint_id is None:
        raise NotFound(f"job {job_id} has no checkpoint yet")
    checkpoint = session.get(Checkpoint, job.best_checkpoint_id)
    if checkpoint is None:
        raise Gone(f"the best checkpoint of job {job_id} no longer exists")
    return _download(job, checkpoint)


def checkpoint_file(session: Session, checkpoint_id: str, *, owner: str) -> Download:
    found = session.execute(
        select(Checkpoint, Job)
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Checkpoint.id == checkpoint_id, Job.owner == owner)
    ).one_or_none()
    if found is None:
        raise NotFound(f"checkpoint {checkpoint_id} not found")
    checkpoint, job = found
    return _download(job, checkpoint)


def _download(job: Job, checkpoint: Checkpoint) -> Download:
    missing = f"the weights file of checkpoint {checkpoint.id} is missing from the artifact store"
    artifacts = get_artifacts()
    if artifacts.remote:
        key = checkpoint.weights_path
        info = objects.verified_info(artifacts, key, checkpoint.bytes, checkpoint.sha256)
        if info is None:
            raise Gone(f"{missing}, or damaged (its sha256 no longer matches)")
        name = f"{_file_stem(job.name) or job.id}-epoch{checkpoint.epoch}.safetensors"
        return Download(None, None, name, checkpoint.sha256, key=key, info=info)
    try:
        path = artifacts.path(checkpoint.weights_path)
        found = path.stat()
    except (OSError, ValueError):
        raise Gone(missing) from None
    if not stat.S_ISREG(found.st_mode):
        raise Gone(missing)
    if not verified(path, found, checkpoint.bytes, checkpoint.sha256):
        raise Gone(
            f"the weights file of checkpoint {checkpoint.id} is damaged: its sha256 no longer "
            "matches the one recorded when it was written"
        )
    stem = _file_stem(job.name) or job.id
    return Download(
        path=path,
        stat=found,
        filename=f"{stem}-epoch{checkpoint.epoch}.safetensors",
        sha256=checkpoint.sha256,
    )


# path → (inode, size, mtime, sha256) of files whose content was hashed and matched: a file
# is hashed again only when it changes, so repeated downloads cost one stat, not a full read.
_VERIFIED: dict[str, tuple[int, int, int, str]] = {}
_VERIFIED_LOCK = threading.Lock()
_VERIFIED_MAX = 4096


def verified(path: Path, info: os.stat_result, size: int, sha256: str) -> bool:
    """Whether the file still holds what was recorded (size and sha256)."""
    if info.st_size != size:
        return False
    key = str(path)
    stamp = (info.st_ino, info.st_size, info.st_mtime_ns, sha256)
    with _VERIFIED_LOCK:
        if _VERIFIED.get(key) == stamp:
            return True
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError:
        return False
    if not hmac.compare_digest(digest.hexdigest(), sha256):
        return False
    with _VERIFIED_LOCK:
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.clear()
        _VERIFIED[key] = stamp
    return True


def _file_stem(name: str | None) -> str:
    """A job name made safe for a file name (and a Content-Disposition header)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name or "").strip("-.")

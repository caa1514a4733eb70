"""Exports: recording a request and sending it to a worker; listing; locating the file.

The export itself (torch, onnx) runs in a worker (worker/exports.py): the API only writes
the row and, once it is committed, sends the task by name.
"""

import logging
import stat

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api import objects
from api.checkpoints.service import Download, _file_stem, verified
from api.db import on_commit
from api.errors import Conflict, Gone, NotFound, Unavailable
from api.queue import PUBLISH_RETRY_POLICY, TaskQueue
from descent.queue import EXPORT_TASK
from store.artifacts import get_artifacts
from store.db import session_scope
from store.models import Checkpoint, Export, ExportStatus, Job, utcnow

logger = logging.getLogger("api.exports")

SUFFIX = {"onnx": "onnx", "torchscript": "pt"}


def create_export(
    session: Session, checkpoint_id: str, fmt: str, *, owner: str, queue: str, tasks: TaskQueue
) -> Export:
    found = session.execute(
        select(Checkpoint.id, Checkpoint.job_id)
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Checkpoint.id == checkpoint_id, Job.owner == owner)
    ).one_or_none()
    if found is None:
        raise NotFound(f"checkpoint {checkpoint_id} not found")
    export = Export(job_id=found.job_id, checkpoint_id=checkpoint_id, format=fmt)
    session.add(export)
    session.flush()
    export_id = export.id
    on_commit(session, lambda: _send(export_id, queue, tasks))
    return export


def _send(export_id: str, queue: str, tasks: TaskQueue) -> None:
    try:
        tasks.celery.send_task(
            EXPORT_TASK,
            args=[export_id],
            queue=queue,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )
    except Exception as exc:  # noqa: BLE001 - any broker failure: the export cannot start
        message = f"could not queue the export: {str(exc) or exc.__class__.__name__}"
        logger.warning("export %s: %s", export_id, message)
        with session_scope() as session:
            session.execute(
                update(Export)
                .where(Export.id == export_id, Export.status == ExportStatus.QUEUED)
                .values(status=ExportStatus.FAILED, error=message, finished_at=utcnow())
            )
        raise Unavailable(message) from exc


def list_exports(session: Session, checkpoint_id: str, *, owner: str) -> list[Export]:
    """The checkpoint's exports, oldest first (also after the checkpoint was retired)."""
    rows = session.scalars(
        select(Export)
        .join(Job, Job.id == Export.job_id)
        .where(Export.checkpoint_id == checkpoint_id, Job.owner == owner)
        .order_by(Export.created_at, Export.id)
    ).all()
    if not rows:
        exists = session.scalar(
            select(Checkpoint.id)
            .join(Job, Job.id == Checkpoint.job_id)
            .where(Checkpoint.id == checkpoint_id, Job.owner == owner)
        )
        if exists is None:
            raise NotFound(f"checkpoint {checkpoint_id} not found")
    return list(rows)


def get_export(session: Session, export_id: str, *, owner: str) -> Export:
    export = session.scalars(
        select(Export)
        .join(Job, Job.id == Export.job_id)
        .where(Export.id == export_id, Job.owner == owner)
    ).one_or_none()
    if export is None:
        raise NotFound(f"export {export_id} not found")
    return export


def export_file(session: Session, export_id: str, *, owner: str) -> Download:
    """The exported file, served like a checkpoint's (sha256 ETag, ranges, a file name)."""
    export = get_export(session, export_id, owner=owner)
    if export.status != ExportStatus.SUCCEEDED or export.path is None:
        reason = f": {export.error}" if export.error else ""
        # The export exists (404 would say it does not): it has no file yet, or never will.
        raise Conflict(f"export {export_id} has no file: it is {export.status}{reason}")
    assert export.sha256 is not None and export.bytes is not None
    job = session.get_one(Job, export.job_id)
    checkpoint = session.get(Checkpoint, export.checkpoint_id)
    epoch = f"-epoch{checkpoint.epoch}" if checkpoint is not None else ""
    filename = f"{_file_stem(job.name) or job.id}{epoch}.{SUFFIX[export.format]}"
    missing = f"the file of export {export_id} is missing from the artifact store"
    artifacts = get_artifacts()
    if artifacts.remote:
        info = objects.verified_info(artifacts, export.path, export.bytes, export.sha256)
        if info is None:
            raise Gone(f"{missing}, or damaged (its sha256 no longer matches)")
        return Download(None, None, filename, export.sha256, key=export.path, info=info)
    try:
        path = artifacts.path(export.path)
        found = path.stat()
    except (OSError, ValueError):
        raise Gone(missing) from None
    if not stat.S_ISREG(found.st_mode) or not verified(path, found, export.bytes, export.sha256):
        raise Gone(f"{missing}, or damaged (its sha256 no longer matches)")
    return Download(path, found, filename, export.sha256)

"""What a job needs beyond its spec, looked up in the database for the core.

The core finds uploaded files and backbone jobs through a ``core.Resources``; this builds
one for a job from the rows its owner owns: the paths of the uploads the spec names, and
for a backbone job its validated spec and its best checkpoint's weights. Anything missing
(deleted since the submit, or never the owner's) is simply absent, and the core fails the
job at its start with a TrainingError naming it.
"""

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import TrainingError
from core.resources import DatasetCache, Resources
from core.spec import JobBackbone, JobSpec, TorchvisionBackbone
from store.artifacts import Artifacts, ChecksumMismatch
from store.db import session_scope
from store.models import Checkpoint, Job, JobStatus, Upload

# The datasets this worker process read, kept for its next jobs (a study's trials).
DATASETS = DatasetCache()


def job_resources(spec: JobSpec, owner: str, artifacts: Artifacts) -> Resources:
    upload_ids = []
    if spec.dataset.source == "upload" and spec.dataset.id:
        upload_ids.append(spec.dataset.id)
    backbone = spec.backbone
    if isinstance(backbone, TorchvisionBackbone) and backbone.upload_id is not None:
        upload_ids.append(backbone.upload_id)
    resources = Resources(read_cache=DATASETS)
    # (where the local path goes, its name there, stored key, recorded sha256, what it is):
    # looked up first, fetched after the transaction (an object store's download may be long).
    wanted: list[tuple[dict[str, Path], str, str, str | None, str]] = []
    source: JobSpec | None = None
    backbone_weights: dict[str, Path] = {}
    with session_scope() as session:
        if upload_ids:
            rows = session.execute(
                select(Upload.id, Upload.kind, Upload.path, Upload.sha256).where(
                    Upload.owner == owner, Upload.id.in_(upload_ids)
                )
            )
            for row in rows:
                files = resources.datasets if row.kind == "dataset" else resources.weights
                # Checked when fetched from an object store; a local file is read as it is.
                sha256 = row.sha256 if artifacts.remote else None
                wanted.append((files, row.id, row.path, sha256, f"upload {row.id}"))
        if isinstance(backbone, JobBackbone):
            found = _backbone_job(session, backbone.from_job, owner)
            if found is not None:
                source, key, sha256 = found
                what = f"the best checkpoint of backbone job {backbone.from_job!r}"
                wanted.append((backbone_weights, backbone.from_job, key, sha256, what))
    for files, name, key, sha256, what in wanted:
        files[name] = _local(artifacts, key, sha256, what)
    if isinstance(backbone, JobBackbone) and source is not None:
        resources.backbone_jobs[backbone.from_job] = (source, backbone_weights[backbone.from_job])
    return resources


def _backbone_job(session: Session, job_id: str, owner: str) -> tuple[JobSpec, str, str] | None:
    """The backbone job's spec, and its best checkpoint's weights key and sha256."""
    job = session.scalars(select(Job).where(Job.id == job_id, Job.owner == owner)).one_or_none()
    if job is None or job.status != JobStatus.SUCCEEDED or job.best_checkpoint_id is None:
        return None
    checkpoint = session.get(Checkpoint, job.best_checkpoint_id)
    if checkpoint is None:
        return None
    # Its spec as it was stored (validated at its submit); without the upload context, which
    # the encoder's shape does not need: the layers come from its model and this job's data.
    source = JobSpec.model_validate(job.spec)
    return source, checkpoint.weights_path, checkpoint.sha256


def _local(artifacts: Artifacts, key: str, sha256: str | None, what: str) -> Path:
    """A local copy of a stored file (the file itself in a local folder), its sha256 checked;
    a missing file's path, for the core to say it is missing."""
    try:
        return artifacts.cached(key, sha256)
    except FileNotFoundError:
        return artifacts.path(key)
    except ChecksumMismatch:
        raise TrainingError(f"{what} does not match its recorded sha256") from None

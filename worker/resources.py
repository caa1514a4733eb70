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
from core.resources import Resources
from core.spec import JobBackbone, JobSpec, TorchvisionBackbone
from store.artifacts import LocalArtifacts, sha256_matches
from store.db import session_scope
from store.models import Checkpoint, Job, JobStatus, Upload


def job_resources(spec: JobSpec, owner: str, artifacts: LocalArtifacts) -> Resources:
    upload_ids = []
    if spec.dataset.source == "upload" and spec.dataset.id:
        upload_ids.append(spec.dataset.id)
    backbone = spec.backbone
    if isinstance(backbone, TorchvisionBackbone) and backbone.upload_id is not None:
        upload_ids.append(backbone.upload_id)
    resources = Resources()
    with session_scope() as session:
        if upload_ids:
            rows = session.execute(
                select(Upload.id, Upload.kind, Upload.path).where(
                    Upload.owner == owner, Upload.id.in_(upload_ids)
                )
            )
            for row in rows:
                files = resources.datasets if row.kind == "dataset" else resources.weights
                files[row.id] = artifacts.path(row.path)
        if isinstance(backbone, JobBackbone):
            found = _backbone_job(session, backbone.from_job, owner, artifacts)
            if found is not None:
                resources.backbone_jobs[backbone.from_job] = found
    return resources


def _backbone_job(
    session: Session, job_id: str, owner: str, artifacts: LocalArtifacts
) -> tuple[JobSpec, Path] | None:
    job = session.scalars(select(Job).where(Job.id == job_id, Job.owner == owner)).one_or_none()
    if job is None or job.status != JobStatus.SUCCEEDED or job.best_checkpoint_id is None:
        return None
    checkpoint = session.get(Checkpoint, job.best_checkpoint_id)
    if checkpoint is None:
        return None
    # Its spec as it was stored (validated at its submit); without the upload context, which
    # the encoder's shape does not need: the layers come from its model and this job's data.
    source = JobSpec.model_validate(job.spec)
    path = artifacts.path(checkpoint.weights_path)
    if path.is_file() and not sha256_matches(path, checkpoint.sha256):
        raise TrainingError(
            f"the best checkpoint of backbone job {job_id!r} does not match its recorded sha256"
        )
    return source, path

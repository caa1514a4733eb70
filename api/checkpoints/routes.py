"""Checkpoint routes: the listing and the safetensors downloads."""

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from api import conditional, objects
from api.checkpoints import service
from api.checkpoints.schemas import CheckpointsPublic
from api.deps import CurrentOwner, SessionDep
from descent.settings import get_settings

router = APIRouter(tags=["checkpoints"])

Redirect = Annotated[
    bool,
    Query(
        description="Answer 307 to a presigned URL of the object store (artifacts_url s3://) "
        "instead of streaming the file through the API; ignored with a local folder."
    ),
]

DOWNLOAD = {
    200: {
        "content": {"application/octet-stream": {}},
        "description": "The safetensors weights; the ETag and X-Checksum-SHA256 carry its sha256.",
    },
    206: {
        "content": {"application/octet-stream": {}},
        "description": "The requested byte range (Range: bytes=...) of the weights",
    },
    304: {"description": "Not modified (If-None-Match holds the file's ETag)"},
    307: {"description": "?redirect=true with an object store: the file's presigned URL"},
    400: {"description": "A malformed Range header"},
    404: {"description": "No such job or checkpoint, or no checkpoint yet"},
    410: {
        "description": "The checkpoint's file is gone from the artifact store, or damaged "
        "(its sha256 no longer matches)"
    },
    416: {"description": "The requested range is outside the file"},
}


@router.get("/v1/jobs/{job_id}/checkpoints", responses={404: {"description": "No such job"}})
def list_checkpoints(job_id: str, session: SessionDep, owner: CurrentOwner) -> CheckpointsPublic:
    """The job's kept checkpoints in epoch order."""
    return CheckpointsPublic(items=service.list_checkpoints(session, job_id, owner=owner))


@router.get("/v1/jobs/{job_id}/checkpoints/best", response_class=FileResponse, responses=DOWNLOAD)
def download_best(
    job_id: str,
    request: Request,
    session: SessionDep,
    owner: CurrentOwner,
    redirect: Redirect = False,
) -> Response:
    """The weights of the job's best checkpoint, as a safetensors file."""
    download = service.best_checkpoint(session, job_id, owner=owner)
    return _file_response(request, download, redirect)


@router.get("/v1/checkpoints/{checkpoint_id}", response_class=FileResponse, responses=DOWNLOAD)
def download_checkpoint(
    checkpoint_id: str,
    request: Request,
    session: SessionDep,
    owner: CurrentOwner,
    redirect: Redirect = False,
) -> Response:
    """The weights of any kept checkpoint, as a safetensors file."""
    download = service.checkpoint_file(session, checkpoint_id, owner=owner)
    return _file_response(request, download, redirect)


def _file_response(request: Request, download: service.Download, redirect: bool) -> Response:
    if download.key is not None and download.info is not None:  # in an object store
        return objects.download(
            request.method,
            request.headers,
            service.get_artifacts(),
            download.key,
            download.info,
            etag=f'"{download.sha256}"',
            filename=download.filename,
            redirect=redirect,
            presign_seconds=get_settings().s3_presign_seconds,
            extra={"X-Checksum-SHA256": download.sha256},
        )
    assert download.path is not None and download.stat is not None
    return conditional.download(
        request.method,
        request.headers,
        download.path,
        download.stat,
        etag=f'"{download.sha256}"',
        filename=download.filename,
        extra={"X-Checksum-SHA256": download.sha256},
    )

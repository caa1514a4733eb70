"""Checkpoint routes: the listing and the safetensors downloads."""

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from api.checkpoints import service
from api.checkpoints.schemas import CheckpointsPublic
from api.deps import CurrentOwner, SessionDep

router = APIRouter(tags=["checkpoints"])

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
    job_id: str, request: Request, session: SessionDep, owner: CurrentOwner
) -> Response:
    """The weights of the job's best checkpoint, as a safetensors file."""
    return _file_response(request, service.best_checkpoint(session, job_id, owner=owner))


@router.get("/v1/checkpoints/{checkpoint_id}", response_class=FileResponse, responses=DOWNLOAD)
def download_checkpoint(
    checkpoint_id: str, request: Request, session: SessionDep, owner: CurrentOwner
) -> Response:
    """The weights of any kept checkpoint, as a safetensors file."""
    return _file_response(request, service.checkpoint_file(session, checkpoint_id, owner=owner))


def _file_response(request: Request, download: service.Download) -> Response:
    etag = f'"{download.sha256}"'
    headers = {"ETag": etag, "X-Checksum-SHA256": download.sha256}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return FileResponse(
        download.path,
        media_type="application/octet-stream",
        filename=download.filename,
        stat_result=download.stat,
        headers=headers,
    )

"""Checkpoint routes: the listing and the safetensors downloads."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import FileResponse

from api import conditional, objects
from api.checkpoints import service
from api.checkpoints.schemas import CheckpointsPublic
from api.deps import CurrentOwner, SessionDep
from api.openapi import BINARY, header
from descent.settings import get_settings

router = APIRouter(tags=["checkpoints"])

Redirect = Annotated[
    bool,
    Query(
        description="Answer 307 to a presigned URL of the object store (artifacts_url s3://) "
        "instead of streaming the file through the API; ignored with a local folder."
    ),
]

FILE_HEADERS = {
    "ETag": header("The file's sha256, quoted: a strong entity tag"),
    "Last-Modified": header("When the file was written"),
    "Content-Disposition": header('attachment; filename="<job name>-epoch<N>.safetensors"'),
    "X-Checksum-SHA256": header("The file's sha256, hex"),
    "Accept-Ranges": header("bytes"),
}
DOWNLOAD: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/octet-stream": BINARY},
        "description": "The safetensors weights; the ETag and X-Checksum-SHA256 carry its sha256.",
        "headers": FILE_HEADERS,
    },
    206: {
        "content": {"application/octet-stream": BINARY},
        "description": "The requested byte range (Range: bytes=...) of the weights",
        "headers": {
            **FILE_HEADERS,
            "Content-Range": header("bytes <first>-<last>/<size>"),
        },
    },
    304: {
        "description": "Not modified (If-None-Match or If-Modified-Since)",
        "headers": {"ETag": FILE_HEADERS["ETag"], "Last-Modified": FILE_HEADERS["Last-Modified"]},
    },
    307: {"description": "?redirect=true with an object store: the file's presigned URL"},
    404: {"description": "No such job or checkpoint, or no checkpoint yet"},
    410: {
        "description": "The checkpoint's file is gone from the artifact store, or damaged "
        "(its sha256 no longer matches)"
    },
    412: {"description": "If-Match or If-Unmodified-Since does not hold"},
    416: {
        "description": "The requested range is outside the file",
        "headers": {"Content-Range": header("bytes */<size>")},
    },
}


def _conditional_headers(
    range_: Annotated[
        str | None,
        Header(alias="Range", description="bytes=<first>-<last>, bytes=<first>- or bytes=-<n>"),
    ] = None,
    if_range: Annotated[
        str | None,
        Header(alias="If-Range", description="Serve the range only if the ETag still is this"),
    ] = None,
    if_none_match: Annotated[
        str | None,
        Header(alias="If-None-Match", description="304 if the ETag is one of these, or *"),
    ] = None,
    if_match: Annotated[
        str | None, Header(alias="If-Match", description="412 unless the ETag is one of these")
    ] = None,
    if_modified_since: Annotated[
        str | None,
        Header(alias="If-Modified-Since", description="304 unless modified since (HTTP date)"),
    ] = None,
) -> None:
    """Documents the headers a download reads (api/conditional.py reads them)."""


@router.get("/v1/jobs/{job_id}/checkpoints", responses={404: {"description": "No such job"}})
def list_checkpoints(job_id: str, session: SessionDep, owner: CurrentOwner) -> CheckpointsPublic:
    """The job's kept checkpoints in epoch order."""
    return CheckpointsPublic(items=service.list_checkpoints(session, job_id, owner=owner))


@router.get(
    "/v1/jobs/{job_id}/checkpoints/best",
    response_class=FileResponse,
    responses=DOWNLOAD,
    dependencies=[Depends(_conditional_headers)],
)
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


@router.get(
    "/v1/checkpoints/{checkpoint_id}",
    response_class=FileResponse,
    responses=DOWNLOAD,
    dependencies=[Depends(_conditional_headers)],
)
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

"""Export routes: ask for an export of a checkpoint, follow it, download its file."""

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse

from api.checkpoints.routes import DOWNLOAD, Redirect, _conditional_headers, _file_response
from api.deps import CurrentOwner, SessionDep, SettingsDep, TaskQueueDep
from api.exports import service
from api.exports.schemas import ExportPublic, ExportRequest, ExportsPublic

router = APIRouter(tags=["exports"])

EXPORT_DOWNLOAD: dict[int | str, dict[str, Any]] = {
    **DOWNLOAD,
    200: {
        **DOWNLOAD[200],
        "description": "The exported model (.onnx, or TorchScript .pt for torch.jit.load); "
        "the ETag and X-Checksum-SHA256 carry its sha256.",
    },
    404: {"description": "No such export"},
    409: {"description": "The export has no file: it is queued, running or failed"},
    410: {"description": "The export's file is gone from the artifact store, or damaged"},
}


@router.post(
    "/v1/checkpoints/{checkpoint_id}/exports",
    status_code=202,
    responses={
        404: {"description": "No such checkpoint"},
        503: {"description": "The export could not be queued"},
    },
)
def create_export(
    checkpoint_id: str,
    body: ExportRequest,
    session: SessionDep,
    owner: CurrentOwner,
    settings: SettingsDep,
    tasks: TaskQueueDep,
) -> ExportPublic:
    """Export the checkpoint's model to ONNX or TorchScript, on a worker. The answer is the
    queued export: poll `GET /v1/exports/{id}` until it has succeeded (with its parity check
    on the job's validation split) or failed (with the reason)."""
    export = service.create_export(
        session,
        checkpoint_id,
        body.format,
        owner=owner,
        queue=settings.cpu_queue,
        tasks=tasks,
    )
    return ExportPublic.from_row(export)


@router.get(
    "/v1/checkpoints/{checkpoint_id}/exports",
    responses={404: {"description": "No such checkpoint"}},
)
def list_exports(checkpoint_id: str, session: SessionDep, owner: CurrentOwner) -> ExportsPublic:
    """The checkpoint's exports, oldest first."""
    rows = service.list_exports(session, checkpoint_id, owner=owner)
    return ExportsPublic(items=[ExportPublic.from_row(row) for row in rows])


@router.get("/v1/exports/{export_id}", responses={404: {"description": "No such export"}})
def get_export(export_id: str, session: SessionDep, owner: CurrentOwner) -> ExportPublic:
    """The export: its status, parity check, error, size and sha256."""
    return ExportPublic.from_row(service.get_export(session, export_id, owner=owner))


@router.get(
    "/v1/exports/{export_id}/file",
    response_class=FileResponse,
    responses=EXPORT_DOWNLOAD,
    dependencies=[Depends(_conditional_headers)],
)
def download_export(
    export_id: str,
    request: Request,
    session: SessionDep,
    owner: CurrentOwner,
    redirect: Redirect = False,
) -> Response:
    """The exported model file."""
    download = service.export_file(session, export_id, owner=owner)
    return _file_response(request, download, redirect)

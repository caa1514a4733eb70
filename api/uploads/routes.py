"""Upload routes: datasets and weights, each with upload, list, read and delete.

The multipart body is parsed by the handler itself, after the bearer token has been checked
(FastAPI would read a declared form before any dependency runs), with tight form limits:
one file part, at most two small text fields (``name``, and ``target`` for a CSV dataset or
``arch`` for weights). The body as a whole is bounded by the upload size limit (413), and
the owner's total by their upload quota (413).
"""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.deps import CurrentOwner, SessionDep, SettingsDep
from api.errors import InvalidParameter, TooLarge
from api.nul import refuse_nul
from api.uploads import service
from api.uploads.schemas import UploadPublic, UploadsPublic
from api.uploads.validate import ARCHITECTURES
from descent.settings import Settings

router = APIRouter(tags=["uploads"])

# Paths whose body may be as large as an upload (api/limits.py reads these).
UPLOAD_PATHS = ("/v1/datasets", "/v1/weights")
MAX_NAME = 200
# The text fields each kind of upload takes besides `name`.
FIELDS = {"dataset": ("name", "target"), "weights": ("name", "arch")}


def _body(
    kind: str, formats: str, extra: dict[str, Any], required: tuple[str, ...] = ("file",)
) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": list(required),
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "description": f"The {kind}: {formats}.",
                            },
                            "name": {"type": "string", "maxLength": MAX_NAME},
                            **extra,
                        },
                    }
                }
            },
        }
    }


UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "A malformed multipart body, or one over the form limits"},
    413: {
        "description": "Over the upload size limit, or over this account's upload quota, or "
        "inspecting the file needs more memory than an upload may use"
    },
    422: {
        "description": "The file is refused (the reason says why), or the form lacks it",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
        },
    },
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such upload"}}
Limit = Annotated[int, Query(ge=1, le=200)]


async def _upload(
    request: Request, session: Any, owner: str, settings: Settings, kind: str
) -> UploadPublic:
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith("multipart/form-data"):
        raise InvalidParameter.one(
            ("body",), "send the file as multipart/form-data, in a part named 'file'"
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        # Refused before a byte of the body is read when it cannot fit the owner's quota.
        remaining = await run_in_threadpool(service.remaining_bytes, session, owner, settings)
        if int(declared) > remaining + 64 * 1024:  # room for the multipart framing
            raise TooLarge(
                f"this upload ({declared} bytes) is over what is left of this account's "
                f"upload quota ({remaining} bytes)"
            )
    allowed = FIELDS[kind]
    async with request.form(max_files=1, max_fields=len(allowed), max_part_size=4096) as form:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise InvalidParameter.one(("body", "file"), "a file part named 'file' is required")
        fields: dict[str, str | None] = dict.fromkeys(allowed)
        for key, value in form.multi_items():
            if key == "file":
                continue
            if key not in allowed:
                raise InvalidParameter.one(
                    ("body", key[:100]),
                    f"unknown form field; a {kind} upload takes file, " + ", ".join(allowed),
                )
            if not isinstance(value, str) or len(value) > MAX_NAME:
                raise InvalidParameter.one(
                    ("body", key), f"a text of at most {MAX_NAME} characters"
                )
            refuse_nul(("body", key), value)  # PostgreSQL cannot store it (api/nul.py)
            fields[key] = value.strip() or None
        row = await run_in_threadpool(
            service.store_upload,
            session,
            owner=owner,
            kind=kind,
            file=file.file,
            filename=file.filename,
            name=fields["name"],
            settings=settings,
            target=fields.get("target"),
            arch=fields.get("arch"),
        )
    return UploadPublic.from_row(row)


# ------------------------------------------------------------------------------ datasets


@router.post(
    "/v1/datasets",
    status_code=201,
    responses=UPLOAD_RESPONSES,
    openapi_extra=_body(
        "dataset",
        "a .csv with a header row (numeric feature columns and the target column named in "
        "`target`), an .npz archive with the arrays x (inputs) and y (targets), or a .zip of "
        "an image folder (one subfolder of images per class)",
        {
            "target": {
                "type": "string",
                "maxLength": MAX_NAME,
                "description": "A CSV dataset's target column (CSV only, required there).",
            }
        },
    ),
)
async def upload_dataset(
    request: Request, session: SessionDep, owner: CurrentOwner, settings: SettingsDep
) -> UploadPublic:
    """Upload a dataset. It is read and checked before it is stored (parseable, shapes,
    dtypes, classes, no empty class; archive member names, unpacked size and compression
    ratio, and what it decodes to, counted from its headers: at most
    `upload_max_decoded_bytes`), in a process of its own with a memory limit, and stored
    under a name the server makes. Its `info` is what a job spec naming
    it (`dataset: {source: upload, id: ...}`) is checked against at submit."""
    return await _upload(request, session, owner, settings, "dataset")


@router.get("/v1/datasets")
def list_datasets(session: SessionDep, owner: CurrentOwner, limit: Limit = 100) -> UploadsPublic:
    """Your datasets, newest first."""
    rows = service.list_uploads(session, owner=owner, kind="dataset", limit=limit)
    return UploadsPublic(items=[UploadPublic.from_row(row) for row in rows])


@router.get("/v1/datasets/{dataset_id}", responses=NOT_FOUND)
def get_dataset(dataset_id: str, session: SessionDep, owner: CurrentOwner) -> UploadPublic:
    row = service.get_upload(session, dataset_id, owner=owner, kind="dataset")
    return UploadPublic.from_row(row)


@router.delete("/v1/datasets/{dataset_id}", status_code=204, responses=NOT_FOUND)
def delete_dataset(dataset_id: str, session: SessionDep, owner: CurrentOwner) -> Response:
    service.delete_upload(session, dataset_id, owner=owner, kind="dataset")
    return Response(status_code=204)


# ------------------------------------------------------------------------------ weights


@router.post(
    "/v1/weights",
    status_code=201,
    responses=UPLOAD_RESPONSES,
    openapi_extra=_body(
        "weights",
        "a torchvision backbone's state dict: a .safetensors file, or a PyTorch .pt/.pth file "
        "that loads with torch.load(weights_only=True)",
        {
            "arch": {
                "type": "string",
                "enum": list(ARCHITECTURES),
                "description": "The torchvision architecture the weights are for.",
            }
        },
        required=("file", "arch"),
    ),
)
async def upload_weights(
    request: Request, session: SessionDep, owner: CurrentOwner, settings: SettingsDep
) -> UploadPublic:
    """Upload backbone weights for a torchvision architecture. They are checked against
    it (missing or unexpected keys, shapes: 422 listing the first mismatches); nothing in
    the file is ever executed. A job uses them with `backbone: {arch: ..., weights:
    "upload:<id>"}`."""
    return await _upload(request, session, owner, settings, "weights")


@router.get("/v1/weights")
def list_weights(session: SessionDep, owner: CurrentOwner, limit: Limit = 100) -> UploadsPublic:
    """Your weights files, newest first."""
    rows = service.list_uploads(session, owner=owner, kind="weights", limit=limit)
    return UploadsPublic(items=[UploadPublic.from_row(row) for row in rows])


@router.get("/v1/weights/{weights_id}", responses=NOT_FOUND)
def get_weights(weights_id: str, session: SessionDep, owner: CurrentOwner) -> UploadPublic:
    row = service.get_upload(session, weights_id, owner=owner, kind="weights")
    return UploadPublic.from_row(row)


@router.delete("/v1/weights/{weights_id}", status_code=204, responses=NOT_FOUND)
def delete_weights(weights_id: str, session: SessionDep, owner: CurrentOwner) -> Response:
    service.delete_upload(session, weights_id, owner=owner, kind="weights")
    return Response(status_code=204)

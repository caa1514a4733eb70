"""Wire shapes of uploads."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from api.encoding import as_utc, json_safe
from store.models import Upload


class UploadPublic(BaseModel):
    id: str
    kind: Literal["dataset", "weights"]
    name: str | None
    filename: str | None
    format: Literal["csv", "npz", "imagefolder", "safetensors", "pytorch"]
    bytes: int
    sha256: str
    # What the check found: a dataset's task, samples, features, classes (names and counts),
    # image shape...; weights' architecture, tensors and parameters. A job spec naming the
    # upload is checked against it at submit.
    info: dict[str, Any]
    created_at: datetime

    @classmethod
    def from_row(cls, row: Upload) -> "UploadPublic":
        created_at = as_utc(row.created_at)
        assert created_at is not None
        return cls(
            id=row.id,
            kind=row.kind,
            name=row.name,
            filename=row.filename,
            format=row.format,
            bytes=row.bytes,
            sha256=row.sha256,
            info=json_safe(row.info),
            created_at=created_at,
        )


class UploadsPublic(BaseModel):
    items: list[UploadPublic]

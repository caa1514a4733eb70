"""Wire shapes of exports."""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.encoding import as_utc, finite
from store.models import Export

ExportFormat = Literal["onnx", "torchscript"]
ExportStatusName = Literal["queued", "running", "succeeded", "failed"]


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: ExportFormat = Field(
        description="onnx (run with onnxruntime) or torchscript (torch.jit.load)"
    )


class Parity(BaseModel):
    """The exported model's outputs against PyTorch's on the job's validation split."""

    max_abs_diff: float | None = Field(
        description="The largest absolute difference over every output of every sample"
    )
    tolerance: float = Field(description="The export fails when max_abs_diff is above it")
    samples: int = Field(description="Validation samples compared")


class ExportPublic(BaseModel):
    id: str
    checkpoint_id: str
    job_id: str
    format: ExportFormat
    status: ExportStatusName
    parity: Parity | None = Field(description="Known once the exported file was compared")
    error: str | None = Field(description="Why the export failed")
    bytes: int | None
    sha256: str | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, export: Export) -> "ExportPublic":
        parity = None
        if export.parity is not None:
            parity = Parity(
                max_abs_diff=finite(export.parity.get("max_abs_diff")),
                tolerance=export.parity["tolerance"],
                samples=export.parity["samples"],
            )
        created_at = as_utc(export.created_at)
        assert created_at is not None
        return cls(
            id=export.id,
            checkpoint_id=export.checkpoint_id,
            job_id=export.job_id,
            format=export.format,
            status=export.status,
            parity=parity,
            error=export.error,
            bytes=export.bytes,
            sha256=export.sha256,
            created_at=created_at,
            finished_at=as_utc(export.finished_at),
        )


class ExportsPublic(BaseModel):
    items: list[ExportPublic]

"""Wire shapes of checkpoints."""

from datetime import datetime

from pydantic import BaseModel

from api.encoding import as_utc, finite
from store.models import Checkpoint


class CheckpointPublic(BaseModel):
    id: str
    epoch: int
    value: float | None
    bytes: int
    sha256: str
    is_best: bool
    is_last: bool
    created_at: datetime

    @classmethod
    def from_row(
        cls, checkpoint: Checkpoint, *, is_best: bool, is_last: bool
    ) -> "CheckpointPublic":
        created_at = as_utc(checkpoint.created_at)
        assert created_at is not None
        return cls(
            id=checkpoint.id,
            epoch=checkpoint.epoch,
            value=finite(checkpoint.value),
            bytes=checkpoint.bytes,
            sha256=checkpoint.sha256,
            is_best=is_best,
            is_last=is_last,
            created_at=created_at,
        )


class CheckpointsPublic(BaseModel):
    items: list[CheckpointPublic]

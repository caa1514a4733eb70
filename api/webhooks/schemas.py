"""Wire shapes of webhooks."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.encoding import as_utc
from core.spec import NotifySpec
from store.models import WebhookDelivery


class WebhookSecret(BaseModel):
    secret: str = Field(
        description="The key of the HMAC-SHA256 in each delivery's Descent-Signature header"
    )
    header: str = Field("Descent-Signature", description="The header that carries it")


class DefaultNotify(BaseModel):
    notify: NotifySpec | None = Field(
        description="Where the events of your jobs and studies that name no `notify` go; "
        "null: none set"
    )


class DeliveryAttempt(BaseModel):
    attempt: int
    status_code: int | None = Field(description="The receiver's answer; null without one")
    error: str | None
    at: datetime


class DeliveryPublic(BaseModel):
    seq: int = Field(description="The event's number in the job: events go out in this order")
    id: str = Field(description="The event's id (<job id>-<seq>), the same on every attempt")
    event: Literal["status", "best", "pruned"]
    url: str
    status: Literal["pending", "sending", "delivered", "failed"]
    attempts: int
    status_code: int | None = Field(description="The last attempt's answer")
    error: str | None = Field(description="Why the last attempt failed")
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime | None
    history: list[DeliveryAttempt]
    payload: dict[str, Any] = Field(description="The JSON body posted")

    @classmethod
    def from_row(cls, row: WebhookDelivery) -> "DeliveryPublic":
        created_at = as_utc(row.created_at)
        assert created_at is not None
        return cls(
            seq=row.seq,
            id=f"{row.job_id}-{row.seq}",
            event=row.event,
            url=row.url,
            status=row.status,
            attempts=row.attempts,
            status_code=row.status_code,
            error=row.error,
            created_at=created_at,
            delivered_at=as_utc(row.delivered_at),
            next_attempt_at=as_utc(row.next_attempt_at) if row.status == "pending" else None,
            history=[DeliveryAttempt(**item) for item in row.history or []],
            payload=row.payload,
        )


class DeliveriesPublic(BaseModel):
    items: list[DeliveryPublic]

"""Webhook routes: the signing secret and a job's delivery log."""

from fastapi import APIRouter

from api.deps import CurrentOwner, SessionDep
from api.webhooks import service
from api.webhooks.schemas import DeliveriesPublic, DeliveryPublic, WebhookSecret

router = APIRouter(tags=["webhooks"])


@router.get("/v1/webhooks/secret")
def get_webhook_secret(session: SessionDep, owner: CurrentOwner) -> WebhookSecret:
    """The key that signs your webhook deliveries (made on first use). Each POST carries
    `Descent-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    return WebhookSecret(secret=service.secret(session, owner))


@router.get("/v1/jobs/{job_id}/deliveries", responses={404: {"description": "No such job"}})
def list_deliveries(job_id: str, session: SessionDep, owner: CurrentOwner) -> DeliveriesPublic:
    """The job's webhook events in order, each with its attempts."""
    rows = service.deliveries(session, job_id, owner=owner)
    return DeliveriesPublic(items=[DeliveryPublic.from_row(row) for row in rows])

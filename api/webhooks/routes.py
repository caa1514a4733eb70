"""Webhook routes: the signing secret, the default notify and a job's delivery log."""

from fastapi import APIRouter, Response

from api.deps import CurrentOwner, SessionDep, SettingsDep
from api.webhooks import service
from api.webhooks.schemas import DefaultNotify, DeliveriesPublic, DeliveryPublic, WebhookSecret
from core.spec import NotifySpec

router = APIRouter(tags=["webhooks"])


@router.get("/v1/webhooks/secret")
def get_webhook_secret(session: SessionDep, owner: CurrentOwner) -> WebhookSecret:
    """The key that signs your webhook deliveries (made on first use). Each POST carries
    `Descent-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    return WebhookSecret(secret=service.secret(session, owner))


@router.get("/v1/webhooks/notify")
def get_default_notify(session: SessionDep, owner: CurrentOwner) -> DefaultNotify:
    """Your default `notify`: used by the jobs and studies you submit without one."""
    return DefaultNotify(notify=service.default_notify(session, owner))


@router.put("/v1/webhooks/notify")
def set_default_notify(
    notify: NotifySpec, session: SessionDep, owner: CurrentOwner, settings: SettingsDep
) -> DefaultNotify:
    """Set your default `notify` ({url, events}). A job or study submitted without `notify`
    then takes it, and its stored spec shows it; one that names its own keeps that. The URL
    is checked as a job's is (422 for a loopback, private or link-local host)."""
    return DefaultNotify(notify=service.set_default_notify(session, owner, notify, settings))


@router.delete("/v1/webhooks/notify", status_code=204)
def clear_default_notify(
    session: SessionDep, owner: CurrentOwner, settings: SettingsDep
) -> Response:
    """Clear your default `notify` (jobs already submitted keep the one they took)."""
    service.set_default_notify(session, owner, None, settings)
    return Response(status_code=204)


@router.get("/v1/jobs/{job_id}/deliveries", responses={404: {"description": "No such job"}})
def list_deliveries(job_id: str, session: SessionDep, owner: CurrentOwner) -> DeliveriesPublic:
    """The job's webhook events in order, each with its attempts."""
    rows = service.deliveries(session, job_id, owner=owner)
    return DeliveriesPublic(items=[DeliveryPublic.from_row(row) for row in rows])

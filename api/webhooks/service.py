"""Webhooks: the owner's signing secret, a job's delivery log, and the submit-time check
of a spec's notify URL (the worker posts the events: worker/webhooks.py)."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.jobs import service as jobs  # (it imports this module: a module reference)
from core.spec import JobSpec
from descent.settings import Settings
from store import webhooks
from store.models import WebhookDelivery


def notify_errors(spec: JobSpec, settings: Settings) -> list[tuple[tuple[str, ...], str, object]]:
    """422 errors of the spec's notify URL: loopback, private and link-local hosts are
    refused unless webhook_allow_private (server-side request forgery)."""
    if spec.notify is None:
        return []
    refused = webhooks.refused_url(spec.notify.url, allow_private=settings.webhook_allow_private)
    if refused is None:
        return []
    return [(("body", "notify", "url"), refused, spec.notify.url)]


def deliveries(session: Session, job_id: str, *, owner: str) -> list[WebhookDelivery]:
    job = jobs.get_job(session, job_id, owner=owner)
    return list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.job_id == job.id)
            .order_by(WebhookDelivery.seq)
        )
    )


def secret(session: Session, owner: str) -> str:
    return webhooks.secret_for(session, owner)

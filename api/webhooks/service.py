"""Webhooks: the owner's signing secret and default notify, a job's delivery log, and the
submit-time check of a notify URL (the worker posts the events: worker/webhooks.py)."""

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import InvalidParameter
from api.jobs import service as jobs  # (it imports this module: a module reference)
from core.spec import JobSpec, NotifySpec
from descent.settings import Settings
from store import webhooks
from store.models import Job, WebhookDelivery


def url_errors(
    notify: NotifySpec | None, settings: Settings, loc: tuple[str, ...]
) -> list[tuple[tuple[str, ...], str, object]]:
    """422 errors of a notify URL at ``loc``: loopback, private and link-local hosts are
    refused unless webhook_allow_private (server-side request forgery)."""
    if notify is None:
        return []
    refused = webhooks.refused_url(notify.url, allow_private=settings.webhook_allow_private)
    return [] if refused is None else [(loc, refused, notify.url)]


def notify_errors(spec: JobSpec, settings: Settings) -> list[tuple[tuple[str, ...], str, object]]:
    return url_errors(spec.notify, settings, ("body", "notify", "url"))


def with_default_notify(session: Session, spec: dict[str, Any], *, owner: str) -> dict[str, Any]:
    """A (JSON) spec that names no notify, with the owner's default: the stored spec shows
    where its events go. The default's URL was checked when it was set (and every POST
    checks it again)."""
    return webhooks.with_default_notify(session, spec, owner)


def record_status(session: Session, job: Job) -> None:
    """Record the job's status event as it is now (a change made by a plain UPDATE)."""
    webhooks.record(session, job, "status")


def default_notify(session: Session, owner: str) -> NotifySpec | None:
    found = webhooks.default_notify(session, owner)
    return None if found is None else NotifySpec.model_validate(found)


def set_default_notify(
    session: Session, owner: str, notify: NotifySpec | None, settings: Settings
) -> NotifySpec | None:
    errors = url_errors(notify, settings, ("body", "url"))
    if errors:
        raise InvalidParameter(errors)
    webhooks.set_default_notify(
        session, owner, None if notify is None else notify.model_dump(mode="json")
    )
    return notify


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

"""Posting a job's webhook events (store/webhooks.py records them), in order, signed.

``deliver(job_id)`` posts the job's undelivered events in seq order: an event is posted
only once every event before it was delivered or given up. Each POST is claimed first (a
compare-and-set on the row), so two senders never post the same event; a sender that dies
mid-POST leaves its claim to expire, and the event is posted again then (receivers dedupe
on the event's ``id``). A failed POST (no answer, or not 2xx) is retried after
``webhook_backoff_seconds`` × 2^(attempt-1) (capped), up to ``webhook_max_attempts``;
the task retries itself with that countdown. The URL's host is resolved again before every
POST and refused if it is private (unless ``webhook_allow_private``); redirects are not
followed.
"""

import json
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import httpx
from celery import Celery, shared_task
from sqlalchemy import select, update

from descent.queue import WEBHOOK_TASK, make_celery
from descent.settings import Settings, get_settings
from store import webhooks
from store.db import session_scope
from store.models import Job, WebhookDelivery, utcnow

log = logging.getLogger(__name__)

OPEN = ("pending", "sending")


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite keeps no zone
        return value.replace(tzinfo=UTC)
    return value


def backoff(attempt: int, settings: Settings) -> float:
    """Seconds before the next try after ``attempt`` failed tries."""
    return float(
        min(
            settings.webhook_backoff_seconds * 2 ** (attempt - 1),
            settings.webhook_backoff_max_seconds,
        )
    )


def deliver(job_id: str, settings: Settings | None = None) -> float | None:
    """Post the job's due events in order. Returns None when none is left to post, or the
    seconds until the first one left may be tried again."""
    settings = settings or get_settings()
    while True:
        now = utcnow()
        with session_scope() as session:
            row = session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.job_id == job_id, WebhookDelivery.status.in_(OPEN))
                .order_by(WebhookDelivery.seq)
                .limit(1)
            ).first()
            if row is None:
                return None
            due = _aware(row.next_attempt_at)
            if due is not None and due > now:
                return (due - now).total_seconds()
            claim_until = now + timedelta(seconds=settings.webhook_timeout_seconds + 30)
            claimed = session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == row.id,
                    WebhookDelivery.status == row.status,
                    WebhookDelivery.attempts == row.attempts,
                )
                .values(status="sending", next_attempt_at=claim_until)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if not claimed:
                continue  # another sender took it: look again
            owner = session.scalar(select(Job.owner).where(Job.id == job_id))
            secret = webhooks.secret_for(session, owner or "")
            delivery_id, url, attempt = row.id, row.url, row.attempts + 1
            event, body = row.event, json.dumps(row.payload, separators=(",", ":")).encode()
        status_code, error = _post(url, event, body, secret, settings)
        delay = _record(delivery_id, attempt, status_code, error, settings)
        if delay is not None:
            return delay


def _post(
    url: str, event: str, body: bytes, secret: str, settings: Settings
) -> tuple[int | None, str | None]:
    refused = webhooks.refused_url(url, allow_private=settings.webhook_allow_private)
    if refused is not None:
        return None, f"refused: the URL {refused}"
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Descent-Webhooks/1",
        "Descent-Event": event,
        webhooks.SIGNATURE_HEADER: webhooks.sign(secret, timestamp, body),
    }
    try:
        response = httpx.post(
            url,
            content=body,
            headers=headers,
            timeout=settings.webhook_timeout_seconds,
            follow_redirects=False,
        )
    except httpx.HTTPError as exc:
        return None, f"{exc.__class__.__name__}: {str(exc) or 'no answer'}"
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"answered {response.status_code}"


def _record(
    delivery_id: int,
    attempt: int,
    status_code: int | None,
    error: str | None,
    settings: Settings,
) -> float | None:
    """Write the attempt's outcome; the delay before the next try of a failed one that is
    tried again (None when it was delivered, or given up)."""
    now = utcnow()
    refused = error is not None and error.startswith("refused:")
    with session_scope() as session:
        row = session.get_one(WebhookDelivery, delivery_id)
        row.attempts = attempt
        row.status_code, row.error = status_code, error
        row.history = [
            *row.history,
            {
                "attempt": attempt,
                "status_code": status_code,
                "error": error,
                "at": now.isoformat(),
            },
        ]
        if error is None:
            row.status, row.delivered_at, row.next_attempt_at = "delivered", now, None
            return None
        if refused or attempt >= settings.webhook_max_attempts:
            row.status, row.next_attempt_at = "failed", None
            return None
        delay = backoff(attempt, settings)
        row.status, row.next_attempt_at = "pending", now + timedelta(seconds=delay)
        return delay


@lru_cache(maxsize=4)
def _celery(broker_url: str) -> Celery:
    return make_celery(get_settings())


def send_tasks(job_ids: Iterable[str]) -> None:
    """The notifier of worker processes: one delivery task per job with new events."""
    settings = get_settings()
    for job_id in job_ids:
        _celery(settings.broker_url).send_task(
            WEBHOOK_TASK, args=[job_id], queue=settings.cpu_queue
        )


webhooks.set_notifier(send_tasks)


@shared_task(name=WEBHOOK_TASK, bind=True)
def deliver_task(self, job_id: str) -> None:  # type: ignore[no-untyped-def]
    delay = deliver(job_id)
    if delay is not None:
        raise self.retry(countdown=max(delay, 0.1), max_retries=None)

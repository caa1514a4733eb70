"""Posting a job's webhook events (store/webhooks.py records them), in order, signed.

``deliver(job_id)`` posts the job's undelivered events in seq order: an event is posted
only once every event before it was delivered or given up. Each POST is claimed first: a
compare-and-set on the row's status and attempt count that takes the next attempt number,
so two senders never post the same attempt, and only the holder of the latest claim
records an outcome. (Not ``SELECT ... FOR UPDATE SKIP LOCKED``: a sender skipping an event
another holds would post the next one out of order.) Delivery is at least once: a sender
that dies mid-POST leaves its claim to expire (``claim_seconds``) and the event is posted
again then, and a POST that timed out is tried again although the receiver may have taken
it; each POST carries the event's id (``Descent-Delivery``, also ``id`` in the body) for
receivers to drop a repeat. A failed POST (no answer, or not 2xx) is retried after
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


def claim_seconds(settings: Settings) -> timedelta:
    """How long a claim holds an event before another sender may post it again: well past
    the longest a POST may take (httpx's timeout is per phase: connect, write, then each
    read) and the time to record its answer. It matters only when a sender died mid-POST."""
    return timedelta(seconds=4 * settings.webhook_timeout_seconds + 60)


def deliver(job_id: str, settings: Settings | None = None) -> float | None:
    """Post the job's due events in order. Returns None when none is left to post, or the
    seconds until the first one left may be tried again."""
    settings = settings or get_settings()
    hold = claim_seconds(settings)
    while True:
        now = utcnow()
        with session_scope() as session:
            row = session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.job_id == job_id, WebhookDelivery.status.in_(webhooks.OPEN))
                .order_by(WebhookDelivery.seq)
                .limit(1)
            ).first()
            if row is None:
                return None
            due = _aware(row.next_attempt_at)
            if due is not None and due > now:
                return (due - now).total_seconds()
            # The claim is the attempt's number: each claim takes a new one, so only the
            # sender holding the latest claim records an outcome (see _record).
            attempt = row.attempts + 1
            claimed = session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == row.id,
                    WebhookDelivery.status == row.status,
                    WebhookDelivery.attempts == row.attempts,
                )
                .values(status="sending", attempts=attempt, next_attempt_at=utcnow() + hold)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if not claimed:
                continue  # another sender took it: look again
            owner = session.scalar(select(Job.owner).where(Job.id == job_id))
            secret = webhooks.secret_for(session, owner or "")
            delivery_id, url = row.id, row.url
            event, body = row.event, json.dumps(row.payload, separators=(",", ":")).encode()
            event_id = f"{row.job_id}-{row.seq}"
        status_code, error = _post(url, event, event_id, body, secret, settings)
        delay = _record(delivery_id, attempt, status_code, error, settings)
        if delay is not None:
            return delay


def _post(
    url: str, event: str, event_id: str, body: bytes, secret: str, settings: Settings
) -> tuple[int | None, str | None]:
    refused = webhooks.refused_url(url, allow_private=settings.webhook_allow_private)
    if refused is not None:
        return None, f"refused: the URL {refused}"
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Descent-Webhooks/1",
        "Descent-Event": event,
        webhooks.DELIVERY_HEADER: event_id,
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
    tried again (None when it was delivered, given up, or claimed meanwhile by another
    sender after this claim expired: that sender records its own attempt, not this one)."""
    now = utcnow()
    refused = error is not None and error.startswith("refused:")
    entry = {"attempt": attempt, "status_code": status_code, "error": error, "at": now.isoformat()}
    values: dict[str, object] = {"status_code": status_code, "error": error}
    delay = None
    if error is None:
        values.update(status="delivered", delivered_at=now, next_attempt_at=None)
    elif refused or attempt >= settings.webhook_max_attempts:
        values.update(status="failed", next_attempt_at=None)
    else:
        delay = backoff(attempt, settings)
        values.update(status="pending", next_attempt_at=now + timedelta(seconds=delay))
    with session_scope() as session:
        history = session.scalar(
            select(WebhookDelivery.history).where(WebhookDelivery.id == delivery_id)
        )
        mine = WebhookDelivery.status == "sending", WebhookDelivery.attempts == attempt
        recorded = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, *mine)
            .values(history=[*(history or []), entry], **values)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
    if not recorded:
        log.warning(
            "webhook delivery %s: attempt %d outlived its claim; another sender took it over",
            delivery_id,
            attempt,
        )
        return None
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
def deliver_task(self, job_id: str) -> None:
    delay = deliver(job_id)
    if delay is not None:
        raise self.retry(countdown=max(delay, 0.1), max_retries=None)

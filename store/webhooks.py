"""Webhook events: recorded with the change they report, signed, checked for where they go.

A job whose spec names ``notify: {url, events}`` gets a ``webhook_deliveries`` row for each
event, numbered per job (``seq``), written in the same transaction as the change: a
``before_flush`` hook watches every session for jobs whose ``status`` or best epoch
changes through the ORM (the worker's epochs and end), and ``record`` adds one
where the change is a plain UPDATE (a worker claiming the job; ``end_job``: a job ended by
a claim, the sweeper or a failed send). Once that transaction
commits, the process's notifier (``set_notifier``) is told which jobs have new events: it
sends the task that posts them (worker/webhooks.py), in seq order.

Events: ``status`` (running, succeeded, failed, cancelled), ``best`` (a new best epoch),
``pruned`` (a study's trial stopped by its pruner).
"""

import hashlib
import hmac
import ipaddress
import secrets
import socket
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import event, func, inspect, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.models import Job, User, WebhookDelivery, WebhookSecret, utcnow

EVENTS = ("status", "best", "pruned")
SIGNATURE_HEADER = "Descent-Signature"
# The event's id (``<job id>-<seq>``), the same on every attempt: what a receiver dedupes on.
DELIVERY_HEADER = "Descent-Delivery"
_PENDING = "webhooks.pending_jobs"
OPEN = ("pending", "sending")  # an event not yet delivered nor given up

_notifier: Callable[[Iterable[str]], None] | None = None


def set_notifier(notifier: Callable[[Iterable[str]], None] | None) -> None:
    """What this process calls with the ids of jobs whose new events are committed."""
    global _notifier
    _notifier = notifier


# ---------------------------------------------------------------------------- signing


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Descent-Signature`` header: ``t=<unix seconds>,v1=<hex HMAC-SHA256 of
    "<t>.<body>">`` (the scheme Stripe uses)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, now: int, tolerance: int = 300) -> bool:
    """Whether a ``Descent-Signature`` header signs this body, made within ``tolerance``
    seconds of ``now`` (what a receiver checks; see docs/webhooks.md)."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def secret_for(session: Session, owner: str) -> str:
    """The owner's signing secret, made on first use."""
    found = session.get(WebhookSecret, owner)
    if found is not None:
        return found.secret
    try:
        with session.begin_nested():
            session.add(WebhookSecret(owner=owner, secret="whsec_" + secrets.token_hex(32)))
    except IntegrityError:  # made meanwhile by another process
        pass
    return session.get_one(WebhookSecret, owner, populate_existing=True).secret


# ---------------------------------------------------------------------------- defaults


def default_notify(session: Session, owner: str) -> dict[str, Any] | None:
    """The owner's default ``notify`` ({"url", "events"}), for the jobs and studies that
    name none; None when the owner has not set one."""
    return session.scalar(select(User.notify).where(User.name == owner))


def set_default_notify(session: Session, owner: str, notify: dict[str, Any] | None) -> None:
    """Set (or, with None, clear) the owner's default ``notify``. The caller checks the URL
    (``refused_url``) first."""
    user = session.scalars(select(User).where(User.name == owner)).one()
    user.notify = notify


def with_default_notify(session: Session, spec: dict[str, Any], owner: str) -> dict[str, Any]:
    """The (JSON) spec with the owner's default ``notify`` where it names none, so the stored
    spec shows where its events go."""
    if spec.get("notify") is not None:
        return spec
    default = default_notify(session, owner)
    return spec if default is None else {**spec, "notify": default}


# ---------------------------------------------------------------------------- targets


def refused_url(url: str, *, allow_private: bool, resolve: bool = True) -> str | None:
    """Why a webhook may not be sent to this URL, or None when it may.

    Only http(s) URLs with a host; and unless ``allow_private``, no address the host
    resolves to may be loopback, private, link-local, reserved, multicast or unspecified
    (server-side request forgery: a job must not make the service call its own network).
    """
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:  # a bracketed host that is no IPv6 address, a port over 65535
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if parts.username or parts.password:
        return "must not carry a user name or password"
    if allow_private:
        return None
    host = parts.hostname
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        if not resolve:
            return None
        try:
            infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
        except (OSError, ValueError) as exc:
            return f"its host {host!r} does not resolve ({exc.__class__.__name__})"
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    for address in addresses:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            return (
                f"its host {host!r} is a loopback, private or link-local address ({address}); "
                "webhooks go to public addresses only (setting webhook_allow_private)"
            )
    return None


# ---------------------------------------------------------------------------- recording


def _notify_spec(job: Job) -> dict[str, Any] | None:
    notify = (job.spec or {}).get("notify")
    return notify if isinstance(notify, dict) and notify.get("url") else None


def _payload(job: Job, name: str) -> dict[str, Any]:
    data: dict[str, Any] = {"status": job.status, "epoch": job.epoch}
    if name == "best":
        data["best"] = {
            "epoch": job.best_epoch,
            "metric": job.monitor,
            "mode": job.mode,
            "value": job.best_value,
            "checkpoint_id": job.best_checkpoint_id,
        }
    else:
        data.update(stop=job.stop, error=job.error)
    return data


def _last_seq(session: Session, job_id: str) -> int:
    """The job's last event number, taken under the job row's lock (PostgreSQL), so that
    two transactions recording events of one job at once number them one after the other
    (the second waits for the first to end) instead of both taking the same number.

    Read afresh each time, never cached in the session: a savepoint rolled back takes its
    events with it. Events added to the session and not yet flushed count too.
    """
    added = [
        obj.seq
        for obj in session.new
        if isinstance(obj, WebhookDelivery) and obj.job_id == job_id and obj.seq is not None
    ]
    with session.no_autoflush:
        session.execute(select(Job.id).where(Job.id == job_id).with_for_update())
        stored = session.scalar(
            select(func.coalesce(func.max(WebhookDelivery.seq), 0)).where(
                WebhookDelivery.job_id == job_id
            )
        )
    return max([stored or 0, *added])


def _add(session: Session, job: Job, names: list[str]) -> None:
    notify = _notify_spec(job)
    if notify is None:
        return
    wanted = [name for name in names if name in notify.get("events", ["status"])]
    if not wanted:
        return
    seq = _last_seq(session, job.id)
    now = utcnow()
    for name in wanted:
        seq += 1
        body = {
            "id": f"{job.id}-{seq}",
            "event": name,
            "seq": seq,
            "job_id": job.id,
            "job_name": job.name,
            "created_at": now.isoformat(),
            "data": _payload(job, name),
        }
        session.add(
            WebhookDelivery(
                job_id=job.id,
                seq=seq,
                event=name,
                url=notify["url"],
                payload=body,
                status="pending",
                attempts=0,
                history=[],
                created_at=now,
            )
        )
    session.info.setdefault(_PENDING, set()).add(job.id)


def record(session: Session, job: Job, name: str = "status") -> None:
    """Record an event of the job as it is now (for changes made by a plain UPDATE)."""
    _add(session, job, [name])


def end_job(session: Session, job_id: str, where: Iterable[Any], values: dict[str, Any]) -> bool:
    """End the job by a compare-and-set UPDATE (its id and the ``where`` clauses; ``values``
    hold its terminal status) and, where it won, record its status event in the same
    transaction: so the event is recorded once, by whoever ended the job. Whether it won."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, *where)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    record(session, session.get_one(Job, job_id, populate_existing=True))
    return True


def _events_of_change(job: Job) -> list[str]:
    state = inspect(job)
    names = []
    best = state.attrs.best_epoch.history
    if best.added and best.added[0] is not None and best.deleted != best.added:
        names.append("best")
    status = state.attrs.status.history
    if status.added and status.deleted and status.added != status.deleted:
        if (job.stop or {}).get("reason") == "pruned":
            names.append("pruned")
        if job.status != "queued":  # a job handed back for a retry is not news
            names.append("status")
    return names


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, _context: Any, _instances: Any) -> None:
    for obj in list(session.dirty):
        if isinstance(obj, Job) and _notify_spec(obj) is not None:
            names = _events_of_change(obj)
            if names:
                _add(session, obj, names)


def notify(job_ids: Iterable[str]) -> None:
    """Have the jobs' open events posted (this process's notifier: a delivery task each).
    A failure is logged: the rows stay open, and a sweeper sends them (``overdue``)."""
    if _notifier is None:
        return
    try:
        _notifier(sorted(job_ids))
    except Exception:  # noqa: BLE001
        import logging

        logging.getLogger(__name__).warning("could not send webhook task", exc_info=True)


def overdue(session: Session, before: datetime) -> list[str]:
    """The jobs with an event still open that should have been tried before ``before``: a
    pending one due then (its task lost: not sent after its commit, or taken by a worker
    that died), or one whose sender's claim expired then (the sender died mid-POST)."""
    due = func.coalesce(WebhookDelivery.next_attempt_at, WebhookDelivery.created_at)
    return list(
        session.scalars(
            select(WebhookDelivery.job_id)
            .where(WebhookDelivery.status.in_(OPEN), due < before)
            .distinct()
        )
    )


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    jobs = session.info.pop(_PENDING, None)
    if jobs:
        notify(jobs)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)

"""Users, their API tokens and their limits: shared by the API (authentication, quotas), the
worker (the compute budget) and the admin commands (``descent users``, ``descent tokens``).

A token is shown once, when it is made; the database keeps only its sha256. Tokens are 256
random bits, so a plain hash is safe to look up by (nothing to stretch, nothing to guess).
"""

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from descent.settings import Settings
from store.models import ApiToken, Job, JobStatus, Upload, User, utcnow

TOKEN_PREFIX = "dsc_"  # lets secret scanners and people recognise a Descent token
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# last_used_at is written at most this often per token, not on every request.
LAST_USED_EVERY = timedelta(minutes=1)


class UserError(ValueError):
    """A user or token command that cannot be done as asked (the message says why)."""


@dataclass(frozen=True)
class Limits:
    """What one owner may use. ``device_hours`` None means no compute budget."""

    active_jobs: int
    epochs: int
    parameters: int
    upload_bytes: int
    device_hours: float | None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def defaults(cls, settings: Settings) -> "Limits":
        return cls(**{name: getattr(settings, f"limit_{name}") for name in cls.names()})

    def with_overrides(self, overrides: dict[str, Any]) -> "Limits":
        known = {k: v for k, v in (overrides or {}).items() if k in self.names()}
        return Limits(**{**asdict(self), **known})


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(
            f"invalid user name {name!r}: 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def get_user(session: Session, name: str) -> User | None:
    return session.scalars(select(User).where(User.name == name)).one_or_none()


def require_user(session: Session, name: str) -> User:
    user = get_user(session, name)
    if user is None:
        raise UserError(f"no user named {name!r}")
    return user


def create_user(session: Session, name: str, limits: dict[str, Any] | None = None) -> User:
    check_name(name)
    if get_user(session, name) is not None:
        raise UserError(f"user {name!r} already exists")
    user = User(name=name, limits=parse_limits(limits or {}))
    session.add(user)
    session.flush()
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))


def parse_limits(values: dict[str, Any]) -> dict[str, Any]:
    """Limit overrides, checked and typed: {"epochs": "100"} → {"epochs": 100}.

    A value of None (or "default") removes the override, so the settings' default applies.
    """
    out: dict[str, Any] = {}
    for name, raw in values.items():
        if name not in Limits.names():
            raise UserError(f"unknown limit {name!r}; limits are: {', '.join(Limits.names())}")
        if raw is None or raw == "default":
            out[name] = None
            continue
        try:
            value: float | int = float(raw) if name == "device_hours" else int(raw)
        except (TypeError, ValueError):
            raise UserError(f"limit {name} must be a number, not {raw!r}") from None
        if value < 0:
            raise UserError(f"limit {name} must not be negative")
        out[name] = value
    return out


def set_limits(session: Session, name: str, values: dict[str, Any]) -> User:
    user = require_user(session, name)
    merged = {**(user.limits or {}), **parse_limits(values)}
    user.limits = {k: v for k, v in merged.items() if v is not None}
    session.flush()
    return user


def lock_owner(session: Session, owner: str) -> None:
    """Hold the owner's write lock until the transaction ends, so that two requests of one
    owner that check a limit and then write (a submit, an upload) run one after the other,
    each reading what the other committed. Call it before the reads the check depends on.

    PostgreSQL: ``SELECT ... FOR UPDATE`` of the user's row. SQLite has no row locks: an
    UPDATE that changes nothing takes the database's write lock (waiting up to the busy
    timeout for it). The driver opens SQLite's transaction at this first write, so the reads
    that follow see every earlier commit; had the transaction read first, SQLite would refuse
    its upgrade to a writer ("database is locked") once another writer had committed.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(
            update(User)
            .where(User.name == owner)
            .values(name=User.name)
            .execution_options(synchronize_session=False)
        )
    else:
        session.execute(select(User.id).where(User.name == owner).with_for_update())


def limits_for(session: Session, owner: str, settings: Settings, *, lock: bool = False) -> Limits:
    """The owner's limits: the settings' defaults with the user's overrides.

    lock=True first takes the owner's write lock (``lock_owner``) until the transaction
    ends, so two submits or uploads of one owner are checked one after the other.
    """
    if lock:
        lock_owner(session, owner)
    user = session.scalars(select(User).where(User.name == owner)).one_or_none()
    defaults = Limits.defaults(settings)
    return defaults.with_overrides(user.limits) if user is not None else defaults


def active_jobs(session: Session, owner: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.owner == owner, Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
        )
        or 0
    )


def used_device_hours(session: Session, owner: str) -> float:
    """The owner's jobs' training time, each counted once per device it held: a job on
    ``training.processes: N`` ranks uses N devices for its runtime."""
    processes = func.coalesce(Job.spec[("training", "processes")].as_integer(), 1)
    seconds = session.scalar(
        select(func.coalesce(func.sum(Job.runtime_seconds * processes), 0.0)).where(
            Job.owner == owner
        )
    )
    return float(seconds or 0.0) / 3600.0


def uploaded_bytes(session: Session, owner: str) -> int:
    total = session.scalar(
        select(func.coalesce(func.sum(Upload.bytes), 0)).where(Upload.owner == owner)
    )
    return int(total or 0)


def create_token(session: Session, user_name: str, label: str = "") -> tuple[ApiToken, str]:
    """A new token for the user: (its row, the token itself, to be shown once)."""
    user = require_user(session, user_name)
    token = new_token()
    row = ApiToken(user_id=user.id, token_hash=hash_token(token), name=label[:100])
    session.add(row)
    session.flush()
    return row, token


def list_tokens(session: Session, user_name: str) -> list[ApiToken]:
    user = require_user(session, user_name)
    return list(
        session.scalars(
            select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.created_at)
        )
    )


def revoke_token(session: Session, token_id: str) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise UserError(f"no token with id {token_id!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def authenticate(session: Session, token: str) -> str | None:
    """The name of the token's user, or None for an unknown or revoked token."""
    digest = hash_token(token)
    row = session.execute(
        select(ApiToken.id, ApiToken.token_hash, ApiToken.last_used_at, User.name)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None))
    ).one_or_none()
    # The index finds the row by the hash; comparing again in constant time costs nothing
    # and keeps the check itself free of timing differences.
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    last_used = row.last_used_at
    if last_used is not None and last_used.tzinfo is None:  # SQLite keeps no zone
        last_used = last_used.replace(tzinfo=UTC)
    now = datetime.now(UTC)
    if last_used is None or now - last_used > LAST_USED_EVERY:
        session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
    return str(row.name)


def write_private(path: Path, text: str) -> None:
    """Write a secret file readable by its owner only (mode 0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ensure_local_token(session_factory: Any, path: Path, name: str = "local") -> tuple[str, bool]:
    """The embedded default's user and token: (token, whether it was made just now).

    The token in ``path`` is kept while it is valid; otherwise the user (made if missing)
    gets a new token, written to ``path`` with mode 0600.
    """
    with session_factory() as session:
        if get_user(session, name) is None:
            create_user(session, name)
        if path.exists():
            token = path.read_text().strip()
            if token and authenticate(session, token) == name:
                return token, False
        _, token = create_token(session, name, label="descent serve")
    write_private(path, token)  # after the commit: the file never holds an unknown token
    return token, True

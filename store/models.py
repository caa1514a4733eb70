"""Tables. The schema changes only through Alembic migrations (migrations/)."""

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a real bigint.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class JobStatus:
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
    ALL = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)


class User(Base):
    """Someone who owns jobs, datasets and weights. Made by the admin command only."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # What every owned row's `owner` column holds; never changes once made.
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # Overrides of the per-owner limits in the settings ({"epochs": 100, ...}); absent keys
    # take the settings' default.
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The owner's default `notify` ({"url", "events"}) for jobs and studies that name none.
    notify: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    """A bearer token. Only its sha256 is stored: the token itself is shown once, when made."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # A plain sha256 is enough: tokens are 256 random bits, not passwords to stretch.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_owner_created", "owner", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # The owning user's name (users.name); every lookup by id is scoped to it.
    owner: Mapped[str] = mapped_column(String(64), default="local")
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED, index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String(64))
    queue: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Progress, denormalized from metrics/checkpoints so that polling a job is one row read.
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    monitor: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(8))
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    best_value: Mapped[float | None] = mapped_column(Float)
    best_checkpoint_id: Mapped[str | None] = mapped_column(String(32))
    last_value: Mapped[float | None] = mapped_column(Float)
    patience_wait: Mapped[int | None] = mapped_column(Integer)
    stop: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    diagnosis: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # What is allowed but probably not meant (batch norm on small batches, leaked samples).
    warnings: Mapped[list[str] | None] = mapped_column(JSON)
    # {"trainable": n, "frozen": m}, known once the worker has built the model.
    parameters: Mapped[dict[str, int] | None] = mapped_column(JSON)
    # Cancelling only sets this flag; the worker's training loop sees it within a step.
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The lease of the worker running the job (one execution at a time).
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the job was last queued while its task message is not yet recorded as sent
    # (None once it is): the sweeper sends again a job queued and unsent for too long
    # (store/outbox.py).
    unsent_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Seconds of training spent on this job, over all its attempts (the owner's compute budget).
    runtime_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # The most device memory the job's training held at once, over all its attempts (bytes).
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)


class Metric(Base):
    """One value of one named metric. step 0 holds the per-epoch value."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("job_id", "epoch", "step", "name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer, default=0)
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)


class Checkpoint(Base):
    """A kept checkpoint. The row and its files are created and deleted together."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "epoch"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)
    # Paths relative to the artifact store's root.
    weights_path: Mapped[str] = mapped_column(String(500))
    state_path: Mapped[str] = mapped_column(String(500))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Upload(Base):
    """A dataset or weights file a user uploaded. Its stored name is made by the server
    (``uploads/<kind>/<id>.<format>``); the client's file name is kept for display only."""

    __tablename__ = "uploads"
    __table_args__ = (Index("ix_uploads_owner_kind_created", "owner", "kind", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # dataset | weights
    name: Mapped[str | None] = mapped_column(String(200))
    filename: Mapped[str | None] = mapped_column(String(200))
    # csv | npz | imagefolder (datasets); safetensors | pytorch (weights)
    format: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(500))  # relative to the artifact store's root
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    # What validation found (core.uploads' metadata): a dataset's task, shapes and classes,
    # or weights' architecture and tensors. Job specs naming the upload are checked against it.
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StudyStatus:
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    ALL = (RUNNING, COMPLETED, CANCELLED)


class Study(Base):
    """A hyperparameter search: a base job spec, a space over spec paths, an algorithm and a
    pruner. Its trials are ordinary jobs (``study_trials`` links them); this row and the
    trials' rows are the whole state of the search (the sampler is rebuilt from them)."""

    __tablename__ = "studies"
    __table_args__ = (Index("ix_studies_owner_created", "owner", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=StudyStatus.RUNNING, index=True)
    # The study as submitted, normalized: base, space, objective, algorithm, pruner, ...
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    queue: Mapped[str] = mapped_column(String(32))
    # Points of a grid search (null for the other algorithms).
    grid_size: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class StudyTrial(Base):
    """One trial of a study: its number (unique in the study, so a retried top-up never
    makes a trial twice), its job, and the parameters it was given."""

    __tablename__ = "study_trials"
    __table_args__ = (UniqueConstraint("study_id", "number"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    # {dotted spec path: value}, as shown to the user.
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The same point as the sampler sees it ({name: number, or a choice's index}).
    raw: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The pruner's own bookkeeping of this trial (the rungs it passed, with their values).
    system_attrs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The pruner's decision, once taken: the job's `stop` (the trial ends after that epoch).
    pruned: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# A trial's study and parameters, read with its job (a correlated subquery: no join, so
# ``SELECT ... FOR UPDATE`` of a job stays valid on PostgreSQL); null for other jobs.
Job.study_id = column_property(
    select(StudyTrial.study_id)
    .where(StudyTrial.job_id == Job.id)
    .correlate_except(StudyTrial)
    .scalar_subquery()
)
Job.params = column_property(
    select(StudyTrial.params)
    .where(StudyTrial.job_id == Job.id)
    .correlate_except(StudyTrial)
    .scalar_subquery()
)


class ExportStatus:
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TERMINAL = frozenset({SUCCEEDED, FAILED})


class Export(Base):
    """A checkpoint's model exported to ONNX or TorchScript by a worker, with the parity
    check of its outputs against PyTorch's on the job's validation split. The exported file
    does not need its checkpoint once written: the checkpoint may be retired meanwhile."""

    __tablename__ = "exports"
    __table_args__ = (Index("ix_exports_checkpoint_created", "checkpoint_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    checkpoint_id: Mapped[str] = mapped_column(String(32))
    format: Mapped[str] = mapped_column(String(16))  # onnx | torchscript
    status: Mapped[str] = mapped_column(String(16), default=ExportStatus.QUEUED)
    # {"max_abs_diff": ..., "tolerance": ..., "samples": ...} once compared.
    parity: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    path: Mapped[str | None] = mapped_column(String(500))  # relative to the artifact store
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookSecret(Base):
    """The key that signs a user's webhook deliveries; made on first use."""

    __tablename__ = "webhook_secrets"

    owner: Mapped[str] = mapped_column(
        ForeignKey("users.name", ondelete="CASCADE"), primary_key=True
    )
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookDelivery(Base):
    """One event of a job for its `notify` URL, numbered in the job's order (seq). The row
    is written in the transaction of the change it reports; a sender posts the job's rows
    in seq order, each until it is accepted or its attempts run out."""

    __tablename__ = "webhook_deliveries"
    # The status index: the sweepers look for the open rows (store/webhooks.py ``overdue``).
    __table_args__ = (
        UniqueConstraint("job_id", "seq"),
        Index("ix_webhook_deliveries_status", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(16))  # status | best | pruned
    url: Mapped[str] = mapped_column(String(2000))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # pending | sending | delivered | failed
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # [{"attempt", "status_code", "error", "at"}], one entry per attempt.
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Counter(Base):
    """A monotonic counter, one row per (name, source): each process adds to its own row in
    the transaction of what it counts, so writers never contend for one row, and a scrape
    sums a handful of rows whatever the size of the metrics table. Rows are never deleted
    (a counter never goes down)."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    source: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[float] = mapped_column(Float, default=0.0)

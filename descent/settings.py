"""One settings object for every process (api, worker, migrations).

Values come from the environment with the ``DESCENT_`` prefix; ``DATABASE_URL`` and
``REDIS_URL`` are accepted as they are, since that is what hosting platforms set.
Without any of them the service runs on its embedded default: SQLite files and local
artifacts in one data folder, and a Celery transport that needs no server.
"""

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DESCENT_", extra="ignore")

    env: str = "development"
    data_dir: Path = Path("data")
    database_url: str = Field(
        "", validation_alias=AliasChoices("DESCENT_DATABASE_URL", "DATABASE_URL")
    )
    # The database password, read from this file (a Docker or Kubernetes secret) and set into
    # database_url, quoted, so any character works; the URL then carries none.
    database_password_file: Path | None = None
    # Every wait on the database is bounded, so that one that is down or hung answers 503
    # within seconds. database_timeout bounds one statement, lock waits included
    # (PostgreSQL's statement_timeout, SQLite's busy timeout); a PostgreSQL that answers
    # nothing at all is given up a second later and its connection dropped.
    database_timeout: float = 10.0
    database_connect_timeout: float = 5.0
    # Connections each process keeps open (pool size) and may open beyond them under load
    # (overflow); a request waits at most database_pool_timeout seconds for one. The API
    # runs up to 40 requests at once in its threadpool: size + overflow should exceed that.
    database_pool_size: int = 10
    database_max_overflow: int = 40
    database_pool_timeout: float = 10.0
    broker_url: str = Field("", validation_alias=AliasChoices("DESCENT_BROKER_URL", "REDIS_URL"))
    artifacts_dir: Path | None = None
    # Where checkpoints and uploads are stored: empty, the local folder artifacts_dir (every
    # process must see it); s3://bucket/prefix, S3-compatible object storage (artifacts_dir
    # is then each process's scratch and cache). Credentials and region: the standard AWS
    # variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, ...).
    artifacts_url: str = ""
    # The S3 server when not AWS (http://seaweedfs:8333); empty: AWS_ENDPOINT_URL, else AWS.
    s3_endpoint_url: str = ""
    # The endpoint presigned download URLs name (?redirect=true), when clients reach the
    # server by another address than the service does; empty: s3_endpoint_url.
    s3_public_endpoint_url: str = ""
    # path (bucket in the path: most self-hosted servers), virtual (bucket in the host name)
    # or auto (boto3's choice).
    s3_addressing_style: str = "path"
    # Files larger than this many MiB go up and down in parts of this size, this many at once.
    s3_multipart_chunk_mb: int = 16
    s3_max_concurrency: int = 8
    # How long a presigned download URL is valid, in seconds.
    s3_presign_seconds: int = 3600
    # Jobs with device cuda go to the gpu queue, device cpu to the cpu queue, device auto to
    # the gpu queue when gpu_workers is set, else the cpu queue (descent.queue.training_queue).
    cpu_queue: str = "cpu"
    gpu_queue: str = "gpu"
    # Whether this deployment runs GPU workers (workers whose first queue is the gpu queue):
    # set it where the API runs, so that device auto jobs wait for a GPU.
    gpu_workers: bool = False
    # How often the embedded (SQLAlchemy) transport polls its table, in seconds.
    broker_polling_interval: float = 0.1
    # Prefix of every Redis key the broker writes (lets several deployments share a server).
    broker_key_prefix: str = ""
    # Redis hands an unacknowledged task back only after this many seconds.
    broker_visibility_timeout: int = 3600
    # Threads torch uses in each worker process (0: its default, one per core or
    # OMP_NUM_THREADS); set it to the CPUs a worker may use, or every worker takes every core.
    worker_threads: int = 0
    # A CPU job whose training step (forward and backward of a batch, counted at its start)
    # is under this many floating-point operations trains on one thread (worker/threads.py);
    # 0: every job uses worker_threads.
    single_thread_below_flops: float = Field(default=4e6, ge=0)
    # How much freed memory a worker's malloc keeps for the next training step instead of
    # giving it back to the kernel (worker/memory.py); 0: glibc's defaults.
    worker_malloc_keep_mb: int = Field(default=256, ge=0)
    # Requests larger than this are refused with 413 before they are read whole.
    max_body_bytes: int = 1_000_000
    # Dataset and weights uploads have a limit of their own (413 over it); each owner's
    # uploads together are bounded by limit_upload_bytes.
    max_upload_bytes: int = 200_000_000
    # An archive (an .npz dataset, an image folder's zip) may unpack to at most this many
    # bytes (zip bombs).
    max_unpacked_bytes: int = 2_000_000_000
    # What an uploaded dataset may take decoded (image pixels, arrays, a CSV's numbers),
    # counted from its headers before decoding (422 over it). Uploads are inspected in a
    # child process limited to twice this plus 1 GiB of memory (413 past it).
    upload_max_decoded_bytes: int = 1 << 30
    metrics_page_limit: int = 1000
    # Origins (comma-separated, e.g. "https://lab.example.org") whose pages may call the API
    # from a browser (CORS); empty: none, and no CORS header is sent.
    cors_origins: str = ""
    # The key that signs event stream tickets (browsers' EventSource); unset: one is made
    # once and kept in <data dir>/stream-secret. Set the same one on every API host.
    stream_ticket_secret: str = ""

    # Authentication: a token's owner is remembered this many seconds, so a revoked token
    # stops working within this time, and most requests cost no database read for it.
    token_cache_seconds: float = 5.0

    # Per-owner limits (OWASP API4); each can be overridden per user (`descent users limits`).
    # Jobs queued or running at once; more are refused with 429.
    limit_active_jobs: int = 8
    # Most epochs (training.epochs) one job may ask for.
    limit_epochs: int = 10_000
    # Most parameters of one job's model (a frozen backbone's included: it may be unfrozen,
    # and every step runs through it).
    limit_parameters: int = 50_000_000
    # Bytes of datasets and weights an owner may keep uploaded, all uploads together.
    limit_upload_bytes: int = 1_000_000_000
    # Device-hours of training an owner may use in all (no limit when unset).
    limit_device_hours: float | None = None

    # The lease a running job holds: its worker's heartbeat every heartbeat_seconds; a lease
    # whose heartbeat is older than lease_timeout_seconds belongs to a dead worker, and the
    # sweeper (every sweep_seconds, in each worker) queues the job again.
    heartbeat_seconds: float = 5.0
    lease_timeout_seconds: float = 30.0
    sweep_seconds: float = 10.0
    # A queued job whose task message is not recorded as sent this many seconds after it was
    # queued (its sender died between the commit and the send) is sent again by the sweeper.
    resend_grace_seconds: float = 30.0
    # A job is started at most this many times (a job that kills its worker fails after it).
    max_attempts: int = 3
    # Failure classes retried from the last checkpoint; every other class fails the job at
    # once with its reason. Classes: worker_lost, connection, out_of_memory, non_finite_loss,
    # training_error (bad data, device or checkpoint), internal (a bug).
    retry_failures: str = "worker_lost,connection"
    # Longest wait between two retries of a job after a lost connection, in seconds.
    retry_backoff_max_seconds: float = 60.0

    # Webhooks (a job spec's notify): URLs whose host is loopback, private or link-local are
    # refused at submit and at each delivery unless this is true (server-side request
    # forgery). A failed POST is tried again after webhook_backoff_seconds, doubling each
    # time up to webhook_backoff_max_seconds, at most webhook_max_attempts times.
    webhook_allow_private: bool = False
    webhook_backoff_seconds: float = 2.0
    webhook_backoff_max_seconds: float = 600.0
    webhook_max_attempts: int = 10
    webhook_timeout_seconds: float = 10.0

    @model_validator(mode="after")
    def _defaults(self) -> "Settings":
        self.data_dir = self.data_dir.expanduser().resolve()
        if self.database_password_file is not None and self.database_url:
            from sqlalchemy.engine import make_url

            password = self.database_password_file.read_text().rstrip("\r\n")
            url = make_url(self.database_url).set(password=password)
            self.database_url = url.render_as_string(hide_password=False)
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'descent.db'}"
        elif self.database_url.startswith(("postgres://", "postgresql://")):
            # psycopg 3 is the driver; hosting platforms hand out the bare scheme.
            self.database_url = "postgresql+psycopg://" + self.database_url.split("://", 1)[1]
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.data_dir / 'broker.db'}"
        if self.artifacts_dir is None:
            self.artifacts_dir = self.data_dir / "artifacts"
        return self

    @property
    def retried_failures(self) -> frozenset[str]:
        return frozenset(c.strip() for c in self.retry_failures.split(",") if c.strip())

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("sqla+")


@lru_cache
def get_settings() -> Settings:
    return Settings()

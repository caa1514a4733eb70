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
    broker_url: str = Field("", validation_alias=AliasChoices("DESCENT_BROKER_URL", "REDIS_URL"))
    artifacts_dir: Path | None = None
    # The default queue takes jobs with device auto|cpu; device cuda goes to the gpu queue.
    cpu_queue: str = "cpu"
    gpu_queue: str = "gpu"
    # How often the embedded (SQLAlchemy) transport polls its table, in seconds.
    broker_polling_interval: float = 0.1
    # Prefix of every Redis key the broker writes (lets several deployments share a server).
    broker_key_prefix: str = ""
    # Redis hands an unacknowledged task back only after this many seconds.
    broker_visibility_timeout: int = 3600
    # Requests larger than this are refused with 413 before they are read whole.
    max_body_bytes: int = 1_000_000
    metrics_page_limit: int = 1000

    @model_validator(mode="after")
    def _defaults(self) -> "Settings":
        self.data_dir = self.data_dir.expanduser().resolve()
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
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("sqla+")


@lru_cache
def get_settings() -> Settings:
    return Settings()

"""The FastAPI application: ``uvicorn api.main:app``."""

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware

from api import openapi
from api.auth import AUTH_RESPONSES, TokenCache
from api.checkpoints.routes import router as checkpoints_router
from api.dashboard.routes import router as dashboard_router
from api.errors import CatchAllMiddleware, install_error_handlers
from api.events.routes import router as events_router
from api.events.routes import stream_event_schemas
from api.exports.routes import router as exports_router
from api.health.routes import router as health_router
from api.jobs.routes import router as jobs_router
from api.limits import BodySizeLimitMiddleware
from api.methods import OptionsMiddleware, add_head_routes
from api.metrics.cache import MetricsCache
from api.metrics.routes import router as metrics_router
from api.monitoring.middleware import LatencyMiddleware
from api.monitoring.routes import router as monitoring_router
from api.monitoring.service import Telemetry
from api.nul import RefuseNulMiddleware
from api.plots.routes import router as plots_router
from api.queue import TaskQueue
from api.studies.routes import router as studies_router
from api.uploads.routes import UPLOAD_PATHS
from api.uploads.routes import router as uploads_router
from api.uploads.service import sweep_staging
from api.webhooks.routes import router as webhooks_router
from descent.settings import Settings, get_settings
from store import webhooks

GZIP_MINIMUM_BYTES = 1024
# What a page of another origin may send and read, when its origin is in cors_origins.
CORS_REQUEST_HEADERS = [
    "Authorization", "Content-Type", "Last-Event-ID", "Range", "If-Range", "If-Match",
    "If-None-Match", "If-Modified-Since", "If-Unmodified-Since",
]  # fmt: skip
CORS_RESPONSE_HEADERS = [
    "Content-Disposition", "Content-Range", "Accept-Ranges", "ETag", "Last-Modified",
    "X-Checksum-SHA256", "Retry-After", "WWW-Authenticate",
]  # fmt: skip


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweep_staging(settings.artifacts_dir)  # what uploads killed mid-check left behind
        # Webhook events this process records (a job cancelled while queued) are posted by
        # a worker's task, sent once their transaction commits.
        webhooks.set_notifier(lambda job_ids: app.state.task_queue.send_webhooks(job_ids))
        yield
        webhooks.set_notifier(None)
        app.state.task_queue.close()
        app.state.telemetry.close()

    # /docs and /redoc with their JavaScript and CSS served from the package, not a CDN.
    app = FastAPIOffline(
        title="Descent",
        summary="Hosted PyTorch training jobs: submit a spec, poll its metrics, "
        "download the best checkpoint.",
        version="1",
        lifespan=lifespan,
        responses=AUTH_RESPONSES,
        generate_unique_id_function=openapi.operation_id,
    )
    app.state.task_queue = TaskQueue(settings)
    app.state.metrics_cache = MetricsCache()
    app.state.token_cache = TokenCache(settings.token_cache_seconds)
    app.state.telemetry = Telemetry(settings)
    install_error_handlers(app)
    # Added last is outermost: errors from everything inside become JSON.
    # Inside the body size limit: it reads a JSON body whole (see api/nul.py).
    app.add_middleware(RefuseNulMiddleware)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        path_limits=dict.fromkeys(UPLOAD_PATHS, settings.max_upload_bytes),
    )
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(OptionsMiddleware)
    # JSON (and text) answers over GZIP_MINIMUM_BYTES go out gzipped to clients that take it;
    # never the event stream (Starlette excludes text/event-stream: each event must reach the
    # client as it is sent), the PNG plots, or the safetensors downloads (binary, and served
    # in ranges whose offsets are those of the file).
    app.add_middleware(
        GZipMiddleware,
        minimum_size=GZIP_MINIMUM_BYTES,
        exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/octet-stream"),
    )
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:  # no CORS header at all unless origins are allowed
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "HEAD", "POST", "DELETE", "OPTIONS"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_RESPONSE_HEADERS,
            max_age=600,
        )
    # Outside everything else, so that it times the answers of the catch-all too.
    app.add_middleware(LatencyMiddleware, histogram=app.state.telemetry.http_latency)
    for router in (
        health_router,
        jobs_router,
        studies_router,
        metrics_router,
        checkpoints_router,
        exports_router,
        webhooks_router,
        uploads_router,
        events_router,
        plots_router,
        monitoring_router,
        dashboard_router,
    ):
        add_head_routes(router)
        app.include_router(router)
    add_head_routes(app.router)  # /docs, /redoc
    openapi.install(app, settings, stream_event_schemas())
    _redact_access_log()
    return app


class _RedactTokens(logging.Filter):
    """Access log lines never show a token or a stream ticket passed in a query string
    (``?token=…``, ``?ticket=…``)."""

    pattern = re.compile(r"([?&][^=&]*(?:token|ticket)[^=&]*=)[^&\s]*", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.pattern.sub(r"\1[redacted]", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


def _redact_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _RedactTokens) for f in access.filters):
        access.addFilter(_RedactTokens())


app = create_app()

"""The FastAPI application: ``uvicorn api.main:app``."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.checkpoints.routes import router as checkpoints_router
from api.errors import CatchAllMiddleware, install_error_handlers
from api.health.routes import router as health_router
from api.jobs.routes import router as jobs_router
from api.limits import BodySizeLimitMiddleware
from api.metrics.cache import MetricsCache
from api.metrics.routes import router as metrics_router
from api.queue import TaskQueue
from descent.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.task_queue.close()

    app = FastAPI(
        title="Descent",
        summary="Hosted PyTorch training jobs: submit a spec, poll its metrics, "
        "download the best checkpoint.",
        version="1",
        lifespan=lifespan,
    )
    app.state.task_queue = TaskQueue(settings)
    app.state.metrics_cache = MetricsCache()
    install_error_handlers(app)
    # Added last is outermost: errors from everything inside become JSON.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(CatchAllMiddleware)
    app.include_router(health_router)
    app.include_router(jobs_router)
    app.include_router(metrics_router)
    app.include_router(checkpoints_router)
    return app


app = create_app()

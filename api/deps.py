"""Dependencies, as ``Annotated`` aliases that handlers simply declare."""

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api.db import get_session
from api.metrics.cache import MetricsCache
from api.queue import TaskQueue
from descent.settings import Settings, get_settings

# The dependencies below are async because they do no I/O: FastAPI runs a plain `def`
# dependency in the threadpool, a hop every request would pay for nothing.


async def current_owner() -> str:
    """Who is asking. Every job lookup is scoped to this owner.

    Authentication comes later; until then every request is the single local user, and this
    is the one place to change.
    """
    return "local"


async def _settings() -> Settings:
    return get_settings()


async def _task_queue(request: Request) -> TaskQueue:
    queue: TaskQueue = request.app.state.task_queue
    return queue


async def _metrics_cache(request: Request) -> MetricsCache:
    cache: MetricsCache = request.app.state.metrics_cache
    return cache


# scope="function": the session commits when the handler returns, before the response is
# sent, so a client that got its answer reads its own writes, and a failed commit (or a
# failed after-commit send) still turns into an error response.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
CurrentOwner = Annotated[str, Depends(current_owner)]
SettingsDep = Annotated[Settings, Depends(_settings)]
TaskQueueDep = Annotated[TaskQueue, Depends(_task_queue)]
MetricsCacheDep = Annotated[MetricsCache, Depends(_metrics_cache)]

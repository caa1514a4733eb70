"""Dependencies, as ``Annotated`` aliases that handlers simply declare."""

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.orm import Session

from api import tickets
from api.auth import TokenCache, bearer, owner_of
from api.db import get_session
from api.metrics.cache import MetricsCache
from api.queue import TaskQueue
from descent.settings import Settings, get_settings

# The dependencies below are async because they do no I/O: FastAPI runs a plain `def`
# dependency in the threadpool, a hop every request would pay for nothing.


async def current_owner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """Who is asking: the user whose bearer token came with the request (401 without one).

    Every lookup by id is scoped to this owner, so another owner's id answers 404.
    """
    cache: TokenCache = request.app.state.token_cache
    return await owner_of(credentials, cache)


async def stream_owner(
    request: Request,
    job_id: str,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ticket: Annotated[
        str | None,
        Query(
            description="A stream ticket (POST .../events/ticket), for clients that cannot "
            "send Authorization (a browser's EventSource)."
        ),
    ] = None,
) -> str:
    """Who opens a job's event stream: the owner of a stream ticket of this job, or of the
    bearer token."""
    if ticket is not None:
        return tickets.owner_of(tickets.secret(get_settings()), job_id, ticket)
    return await current_owner(request, credentials)


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
StreamOwner = Annotated[str, Depends(stream_owner)]
SettingsDep = Annotated[Settings, Depends(_settings)]
TaskQueueDep = Annotated[TaskQueue, Depends(_task_queue)]
MetricsCacheDep = Annotated[MetricsCache, Depends(_metrics_cache)]

"""Metrics route."""

from typing import Annotated

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentOwner, MetricsCacheDep
from api.metrics import service
from api.metrics.schemas import MetricsPage

router = APIRouter(prefix="/v1/jobs", tags=["metrics"])

MAX_EPOCH = service.MAX_EPOCH  # the epoch column's range: a larger cursor is refused


@router.get(
    "/{job_id}/metrics",
    response_model=MetricsPage,
    responses={404: {"description": "No such job"}},
)
async def get_metrics(
    job_id: str,
    owner: CurrentOwner,
    cache: MetricsCacheDep,
    after: Annotated[
        int, Query(ge=0, le=MAX_EPOCH, description="Return epochs after this one.")
    ] = 0,
    limit: Annotated[
        int | None,
        Query(
            ge=1,
            description="Epochs per page: 100 by default, at most the server's page limit "
            "(`maximum`; 1000 unless configured otherwise).",
        ),
    ] = None,
    max_points: Annotated[
        int | None,
        Query(
            ge=2,
            description=(
                "Downsample the page to at most this many epochs, keeping the first and last "
                "epochs and each bucket's minima and maxima of the losses and the monitored "
                "metric. Without `limit`, the page is then the largest allowed."
            ),
        ),
    ] = None,
) -> Response:
    """Per-epoch metrics in epoch order, `{"items": [...], "next": epoch, "complete": bool}`.

    `next` is always the cursor to continue from: pass it as `after` to get the epochs that
    come after this page (it is the last epoch returned, or `after` itself when the page is
    empty, so polling it never loses its place). `complete` is true once the job has ended
    and this page holds its last epoch: stop polling then."""
    # Every client polls this route, so it is async and takes no SessionDep: a finished
    # job's page comes from memory with no session and no thread hop; anything else is
    # read by the service in the threadpool, in a read-only session of its own.
    size = service.page_size(limit, max_points)
    body = service.cached_page(
        cache, job_id, owner=owner, after=after, limit=size, max_points=max_points
    )
    if body is None:
        body = await run_in_threadpool(
            service.metrics_page,
            cache,
            job_id,
            owner=owner,
            after=after,
            limit=size,
            max_points=max_points,
        )
    return Response(content=body, media_type="application/json")

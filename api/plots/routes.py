"""Plot route: a job's loss and accuracy curves as a PNG."""

from typing import Annotated

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentOwner
from api.openapi import BINARY
from api.plots import service

router = APIRouter(prefix="/v1/jobs", tags=["plots"])


@router.get(
    "/{job_id}/plot.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": BINARY}, "description": "The curves as a PNG image"},
        404: {"description": "No such job"},
    },
)
async def job_plot(
    job_id: str,
    owner: CurrentOwner,
    width: Annotated[int, Query(ge=200, le=4000, description="Pixels.")] = 1000,
    height: Annotated[int, Query(ge=150, le=4000, description="Pixels.")] = 450,
) -> Response:
    """Train and validation loss (and accuracy), with the best epoch and an early stop
    marked. A job with no finished epoch yet gets empty axes with a note."""
    curves = await run_in_threadpool(service.read_curves, job_id, owner)
    png = await run_in_threadpool(service.render_png, curves, width, height)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})

"""The Prometheus scrape route (no auth: it carries counts, never a job's contents)."""

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from starlette.concurrency import run_in_threadpool

from api.monitoring.service import Telemetry
from api.openapi import BINARY

router = APIRouter(tags=["monitoring"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": BINARY}, "description": "Prometheus text format"}},
)
async def prometheus_metrics(request: Request) -> Response:
    """Jobs by status, queue lengths, epoch durations and HTTP latency, for Prometheus."""
    telemetry: Telemetry = request.app.state.telemetry
    body = await run_in_threadpool(generate_latest, telemetry.registry)
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)

"""Event stream route: a job's epochs and status changes as server-sent events."""

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api import tickets
from api.deps import CurrentOwner, SessionDep, SettingsDep, StreamOwner
from api.events import service
from api.jobs.service import get_job
from api.metrics.schemas import EpochMetrics
from api.metrics.service import MAX_EPOCH

router = APIRouter(prefix="/v1/jobs", tags=["events"])

EVENTS = (
    "Server-sent events. `event: status`: data is the job (JobPublic), sent first and at each "
    'change of status; `event: epoch`: data is `{"epoch": N, "metrics": {...}}` '
    "(EpochMetrics), sent as each epoch ends. Every event has an `id:` (`<epoch>:<status>`); "
    "the first event carries `retry:` (milliseconds before reconnecting); comment lines "
    "(`: keepalive`) keep a quiet stream open. A stream that ends without a status event of "
    "a finished job (succeeded, failed, cancelled) was cut: reconnect with Last-Event-ID."
)


def stream_event_schemas() -> dict[str, Any]:
    """The models the event stream's documentation names, for the OpenAPI components."""
    return {"EpochMetrics": EpochMetrics.model_json_schema()}


# No caching, and no buffering by a reverse proxy (nginx honours X-Accel-Buffering).
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {
                "text/event-stream": {
                    # One server-sent event, in OpenAPI 3.2's shape for event streams
                    # (its data is JSON text: x-events names the model of each event's data).
                    "schema": {
                        "type": "object",
                        "description": EVENTS,
                        "properties": {
                            "event": {"type": "string", "enum": ["status", "epoch"]},
                            "data": {"type": "string"},
                            "id": {"type": "string"},
                            "retry": {"type": "integer", "minimum": 0},
                        },
                        "required": ["data"],
                    },
                    # The data of each event, by its name (documentation for people).
                    "x-events": {
                        "status": {"$ref": "#/components/schemas/JobPublic"},
                        "epoch": {"$ref": "#/components/schemas/EpochMetrics"},
                    },
                }
            },
            "description": "`status` and `epoch` events, each with an id to resume from.",
        },
        204: {"description": "The job has ended and the client already has all of it"},
        404: {"description": "No such job"},
    },
)
async def job_events(
    job_id: str,
    request: Request,
    owner: StreamOwner,
    last_event_id: Annotated[
        str | None,
        Header(description="Resume after this event (the `id` of the last event received)."),
    ] = None,
    after: Annotated[
        int | None,
        Query(ge=0, le=MAX_EPOCH, description="Start after this epoch (without Last-Event-ID)."),
    ] = None,
) -> Response:
    """The job's progress, live: a `status` event (data: the job) at the start and at each
    change of status, an `epoch` event (data: the epoch's metrics) as each epoch ends.
    The stream ends after the final status. Event ids are `<epoch>:<status>`; reconnect
    with `Last-Event-ID` to resume without gaps or repeats.

    A `Last-Event-ID` that is not an id this stream sends (`<epoch>:<status>`, the epoch in
    ASCII digits) answers 422 naming the header, rather than being ignored: a browser's
    `EventSource` only ever sends back an id it got from this stream, so another one is a
    client's bug, and replaying the job from its start instead would hand that client
    every event again as if new. The 422 surfaces it (an `EventSource` fires `error` and
    stops reconnecting), and the client can reopen with `?after=<epoch>`."""
    cursor = service.parse_cursor(last_event_id, after)
    first = await run_in_threadpool(service.poll, job_id, owner, cursor)
    if service.nothing_to_send(first, cursor):
        return Response(status_code=204)
    if request.method == "HEAD":  # the stream's headers, without opening it
        return StreamingResponse(iter(()), media_type="text/event-stream", headers=STREAM_HEADERS)
    return StreamingResponse(
        service.stream(job_id, owner, cursor, first),
        media_type="text/event-stream",
        headers=STREAM_HEADERS,
    )


class StreamTicket(BaseModel):
    ticket: str = Field(description="Pass it as `?ticket=` to GET .../events")
    expires_at: datetime = Field(description="The stream must be opened before this time")


@router.post(
    "/{job_id}/events/ticket",
    responses={404: {"description": "No such job"}},
)
def events_ticket(
    job_id: str, session: SessionDep, owner: CurrentOwner, settings: SettingsDep
) -> StreamTicket:
    """A short-lived ticket that opens this job's event stream without a token:
    `new EventSource("/v1/jobs/<id>/events?ticket=<ticket>")` in a browser, which cannot
    send `Authorization`. It is valid for this job and its owner only, for a minute; a
    stream it opened runs to its end, and the browser's own reconnects (with
    `Last-Event-ID`) work while it is valid. After that, ask for a new one."""
    get_job(session, job_id, owner=owner)  # 404 for a job this owner lacks
    ticket, expires = tickets.issue(tickets.secret(settings), job_id, owner)
    return StreamTicket(ticket=ticket, expires_at=datetime.fromtimestamp(expires, UTC))

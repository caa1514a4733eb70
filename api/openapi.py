"""The OpenAPI document as generated clients need it.

- Operation ids are stable and readable (``jobs-submit``, ``checkpoints-download-best``):
  generated clients name their functions after them.
- Every error status an operation documents has the ``ErrorDetail`` body
  (``{"detail": "..."}``; 422 keeps FastAPI's list of field errors), 500 included; 401 only
  where a token is asked for, 413 only where a body is read.
- Limits that are settings are written in as this server has them.
"""

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from api.uploads.routes import UPLOAD_PATHS
from descent.settings import Settings


class ErrorDetail(BaseModel):
    """Every error answer but 422: why the request failed."""

    detail: str = Field(description="The reason, for a person to read.")


# route name (the handler's name) → operation id; other routes get "<tag>-<name>".
OPERATION_IDS = {
    "submit_job": "jobs-submit",
    "list_jobs": "jobs-list",
    "get_job": "jobs-get",
    "cancel_job": "jobs-cancel",
    "get_metrics": "metrics-list",
    "list_checkpoints": "checkpoints-list",
    "download_best": "checkpoints-download-best",
    "download_checkpoint": "checkpoints-download",
    "job_events": "events-stream",
    "events_ticket": "events-ticket",
    "job_plot": "plots-get",
    "prometheus_metrics": "monitoring-metrics",
    "healthz": "health-check",
    "upload_dataset": "datasets-upload",
    "list_datasets": "datasets-list",
    "get_dataset": "datasets-get",
    "delete_dataset": "datasets-delete",
    "upload_weights": "weights-upload",
    "list_weights": "weights-list",
    "get_weights": "weights-get",
    "delete_weights": "weights-delete",
    "create_study": "studies-create",
    "list_studies": "studies-list",
    "get_study": "studies-get",
    "list_trials": "studies-trials",
    "cancel_study": "studies-cancel",
}

ERROR_STATUSES = ("400", "401", "404", "409", "410", "412", "413", "416", "429", "503", "500")
SERVER_ERROR = {"description": "An unexpected error (logged by the service; no details sent)"}
BODY_TOO_LARGE = {"description": "Body over the size limit"}
UNPARSEABLE_BODY = {"description": "A body that cannot be parsed (not UTF-8 text, not JSON)"}
# Operations that never ask the database, so never answer 503.
NO_DATABASE = {"monitoring-metrics"}


def operation_id(route: APIRoute) -> str:
    if route.name in OPERATION_IDS:
        return OPERATION_IDS[route.name]
    tag = str(route.tags[0]) if route.tags else "api"
    return f"{tag}-{route.name.replace('_', '-')}"


def install(app: FastAPI, settings: Settings, extra_schemas: dict[str, Any]) -> None:
    """Amend the generated document once (FastAPI caches it): errors, limits, extra models."""
    build = app.openapi
    done: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        if not done:
            schema = build()
            _errors(schema)
            _limits(schema, settings)
            schema["components"]["schemas"].update(extra_schemas)
            done.append(schema)
        return done[0]

    app.openapi = openapi  # type: ignore[method-assign]


def _errors(schema: dict[str, Any]) -> None:
    ref = {"$ref": "#/components/schemas/ErrorDetail"}
    schema["components"]["schemas"]["ErrorDetail"] = ErrorDetail.model_json_schema()
    for item in schema["paths"].values():
        for operation in item.values():
            responses = operation["responses"]
            if "security" not in operation:
                responses.pop("401", None)
            if operation["operationId"] in NO_DATABASE:
                responses.pop("503", None)
            if "requestBody" in operation:
                responses.setdefault("400", UNPARSEABLE_BODY)
                responses.setdefault("413", BODY_TOO_LARGE)
            responses["500"] = SERVER_ERROR
            for status in ERROR_STATUSES:
                if status in responses:
                    responses[status] = {
                        **responses[status],
                        "content": {"application/json": {"schema": ref}},
                    }
            operation["responses"] = dict(sorted(responses.items()))


def _limits(schema: dict[str, Any], settings: Settings) -> None:
    """Limits that are settings, written into the document as this server has them."""
    page = schema["paths"]["/v1/jobs/{job_id}/metrics"]["get"]
    for parameter in page["parameters"]:
        if parameter["name"] == "limit":
            parameter["schema"]["anyOf"][0]["maximum"] = settings.metrics_page_limit
    for path in UPLOAD_PATHS:
        upload = schema["paths"][path]["post"]
        upload["description"] += (
            f"\n\nLimits: the body may be at most {settings.max_upload_bytes:,} bytes, and "
            "this account's uploads together at most its upload quota (413 over either); "
            "the form takes one file part, `file`, and only the text fields listed, "
            "each a short text (400 over the form limits)."
        )


BINARY = {"schema": {"type": "string", "format": "binary"}}


def header(description: str) -> dict[str, Any]:
    """A documented response header."""
    return {"description": description, "schema": {"type": "string"}}

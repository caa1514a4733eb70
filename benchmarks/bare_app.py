"""The service's own app plus a bare route, the baseline of bench_metrics.

``GET /bare`` answers with the bytes of the file named by ``BENCH_BARE_BODY`` (a metrics
page the benchmark fetched from this same server and wrote there), read on its first request
and sent from memory ever after: the same app, middleware and server as the real endpoint,
but no dependency, no database and no threadpool hop.

    BENCH_BARE_BODY=page.json python -m uvicorn benchmarks.bare_app:app --port 8001
"""

import os
from pathlib import Path

from fastapi import Response

from api.main import app

_body: bytes | None = None


@app.get("/bare", include_in_schema=False)
async def bare() -> Response:
    global _body
    if _body is None:
        _body = Path(os.environ["BENCH_BARE_BODY"]).read_bytes()
    return Response(content=_body, media_type="application/json")


__all__ = ["app"]

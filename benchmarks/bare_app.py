"""The service's own app plus a bare route, the baseline of bench_metrics.

``GET /bare`` answers with the bytes of the file named by ``BENCH_BARE_BODY`` (a metrics
page fetched beforehand), read once at start and sent from memory: the same app, the same
middleware, the same server, but no dependency, no database and no threadpool hop.

    BENCH_BARE_BODY=page.json python -m uvicorn benchmarks.bare_app:app --port 8001
"""

import os
from pathlib import Path

from fastapi import Response

from api.main import app

BODY = Path(os.environ["BENCH_BARE_BODY"]).read_bytes()


@app.get("/bare", include_in_schema=False)
async def bare() -> Response:
    return Response(content=BODY, media_type="application/json")


__all__ = ["app"]

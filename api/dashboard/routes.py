"""Dashboard routes: the page (at ``/`` and ``/jobs/{id}``), its script and its style sheet.

The files are package data (``api/dashboard/static``); nothing is built or downloaded to run
them. They hold no data: the script asks the API for it with the user's token (see app.js),
so these routes need none.

The page takes the token from the URL's fragment (``/#token=<token>``), which a browser never
sends, so no access log holds it. A token in the query (``/?token=<token>``, the old way) is
not used: the page is redirected to the same address without it (and the access log line of
that request is redacted, see api/main.py), so the token leaves the address bar at once.
"""

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

STATIC = Path(__file__).parent / "static"

router = APIRouter(tags=["dashboard"], include_in_schema=False)

# Revalidate each time (an ETag round trip), so a new version of the service is picked up.
NO_CACHE = {"Cache-Control": "no-cache"}


def _page(request: Request) -> Response:
    if "token" in request.query_params:
        url = request.url.remove_query_params("token")
        return RedirectResponse(url.path + (f"?{url.query}" if url.query else ""), 303)
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=NO_CACHE)


@router.get("/")
async def dashboard(request: Request) -> Response:
    return _page(request)


@router.get("/jobs/{job_id}")
async def dashboard_job(job_id: str, request: Request) -> Response:
    return _page(request)


@router.get("/dashboard/app.js")
async def dashboard_script() -> FileResponse:
    return FileResponse(STATIC / "app.js", media_type="text/javascript", headers=NO_CACHE)


@router.get("/dashboard/style.css")
async def dashboard_style() -> FileResponse:
    return FileResponse(STATIC / "style.css", media_type="text/css", headers=NO_CACHE)

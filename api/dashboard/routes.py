"""Dashboard routes: the page (at ``/``, ``/jobs/{id}``, ``/studies`` and ``/studies/{id}``),
its scripts and its style sheet.

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

from api.errors import NotFound

STATIC = Path(__file__).parent / "static"
SCRIPTS = ("app", "study")  # study.js: the study page (loaded before app.js, which starts)

router = APIRouter(tags=["dashboard"], include_in_schema=False)

# Revalidate each time (an ETag round trip), so a new version of the service is picked up.
NO_CACHE = {"Cache-Control": "no-cache"}


async def dashboard_page(request: Request) -> Response:
    """One page for every address below: its script reads the address and draws that view."""
    if "token" in request.query_params:
        url = request.url.remove_query_params("token")
        return RedirectResponse(url.path + (f"?{url.query}" if url.query else ""), 303)
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=NO_CACHE)


for page in ("/", "/jobs/{job_id}", "/studies", "/studies/{study_id}"):
    router.add_api_route(page, dashboard_page, methods=["GET"])


@router.get("/dashboard/{script}.js")
async def dashboard_script(script: str) -> FileResponse:
    if script not in SCRIPTS:
        raise NotFound(f"no script {script}.js")
    return FileResponse(STATIC / f"{script}.js", media_type="text/javascript", headers=NO_CACHE)


@router.get("/dashboard/style.css")
async def dashboard_style() -> FileResponse:
    return FileResponse(STATIC / "style.css", media_type="text/css", headers=NO_CACHE)

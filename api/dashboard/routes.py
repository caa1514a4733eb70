"""Dashboard routes: the page (at ``/`` and ``/jobs/{id}``), its script and its style sheet.

The files are package data (``api/dashboard/static``); nothing is built or downloaded to run
them. They hold no data: the script asks the API for it with the user's token (see app.js),
so these routes need none.
"""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).parent / "static"

router = APIRouter(tags=["dashboard"], include_in_schema=False)

# Revalidate each time (an ETag round trip), so a new version of the service is picked up.
NO_CACHE = {"Cache-Control": "no-cache"}


@router.get("/")
async def dashboard() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=NO_CACHE)


@router.get("/jobs/{job_id}")
async def dashboard_job(job_id: str) -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=NO_CACHE)


@router.get("/dashboard/app.js")
async def dashboard_script() -> FileResponse:
    return FileResponse(STATIC / "app.js", media_type="text/javascript", headers=NO_CACHE)


@router.get("/dashboard/style.css")
async def dashboard_style() -> FileResponse:
    return FileResponse(STATIC / "style.css", media_type="text/css", headers=NO_CACHE)

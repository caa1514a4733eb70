"""Health route, for load balancers and container health checks."""

from fastapi import APIRouter

from api.deps import SessionDep
from api.health import service

router = APIRouter(tags=["health"])


@router.get("/healthz", responses={503: {"description": "The database is unavailable"}})
def healthz(session: SessionDep) -> dict[str, str]:
    service.check_database(session)
    return {"status": "ok", "database": "ok"}

"""HEAD wherever GET exists, and OPTIONS answering the methods a path takes.

FastAPI routes take only the methods they declare; Starlette's own routes (the docs) add
HEAD to GET themselves. ``add_head_routes`` gives each GET route a HEAD twin, left out of
the OpenAPI document (HEAD is implied by GET there): the same handler runs, so the headers
(Content-Length, ETag, ...) are those of the GET, and the server sends no body.
"""

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import allowed_methods


def add_head_routes(router: APIRouter) -> None:
    """Give each GET route of the router a HEAD twin (once: routers are module singletons)."""
    heads = {
        r.path for r in router.routes if isinstance(r, APIRoute) and "HEAD" in (r.methods or ())
    }
    for route in list(router.routes):
        if not isinstance(route, APIRoute) or route.path in heads:
            continue
        if "GET" in (route.methods or ()):
            router.add_api_route(
                route.path.removeprefix(router.prefix),  # the router adds its prefix again
                route.endpoint,
                methods=["HEAD"],
                name=route.name,
                dependencies=route.dependencies,
                response_class=route.response_class,
                response_model=route.response_model,
                status_code=route.status_code,
                include_in_schema=False,
            )


class OptionsMiddleware:
    """``OPTIONS <path>``: 204 with ``Allow`` naming every method of the path's routes.

    Put inside the CORS middleware, which answers a browser's preflight (an OPTIONS with
    ``Access-Control-Request-Method``) itself when the origin is allowed. A path no route
    takes goes on to the router (404).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            allowed = allowed_methods(scope["app"], scope)
            if allowed:
                await Response(status_code=204, headers={"Allow": ", ".join(allowed)})(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)

"""HTTP latency, labelled by route template, measured to the response's first byte."""

import time

from prometheus_client import Histogram
from starlette.routing import Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class LatencyMiddleware:
    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        observed = False

        def observe(status: int) -> None:
            nonlocal observed
            if observed:
                return
            observed = True
            # The router puts the matched route in the scope; its path is the template.
            route = getattr(scope.get("route"), "path", None) or _starlette_route(scope)
            self.histogram.labels(scope["method"], route, str(status)).observe(
                time.perf_counter() - start
            )

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                observe(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except Exception:
            observe(500)
            raise


def _starlette_route(scope: Scope) -> str:
    """The path of a route FastAPI does not put in the scope (/openapi.json, the docs'
    static files); "unmatched" only for a path no route takes."""
    app = scope.get("app")
    for route in getattr(getattr(app, "router", None), "routes", ()):
        if isinstance(route, Mount) and scope["path"].startswith(route.path + "/"):
            return route.path  # the scope's root_path now holds the mount: match by prefix
        if isinstance(route, Route) and route.matches(scope)[0] is Match.FULL:
            return route.path
    return "unmatched"

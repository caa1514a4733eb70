"""The API app served by a real uvicorn server in a thread, for tests that need real
concurrent HTTP requests (its threadpool, its connection pool and its locks, as deployed)."""

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import uvicorn

from descent.settings import Settings


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """Serve ``create_app(settings)`` on a free port; yield its base URL."""
    from api.main import create_app

    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=0, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    [sock] = [s for srv in server.servers for s in srv.sockets][:1]
    host, port = sock.getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def at_once(
    count: int, request: Callable[[httpx.Client, int], httpx.Response], *, base_url: str
) -> list[tuple[httpx.Response, float]]:
    """``count`` requests sent together from as many threads (each its own connection):
    [(response, seconds it took)], in the order of the requests."""
    barrier = threading.Barrier(count)

    def one(i: int) -> tuple[httpx.Response, float]:
        with httpx.Client(base_url=base_url, timeout=120) as client:
            barrier.wait()
            start = time.perf_counter()
            response = request(client, i)
            return response, time.perf_counter() - start

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def statuses(results: list[tuple[httpx.Response, float]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for response, _ in results:
        out[response.status_code] = out.get(response.status_code, 0) + 1
    return out

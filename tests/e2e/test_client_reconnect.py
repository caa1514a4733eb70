"""The client and ``descent submit --follow`` behind a proxy that cuts every event stream
after a few events, ending it as a proxy's timeout does (a clean end of the body, before the
job's final status): they reconnect with Last-Event-ID, and no epoch is lost or repeated."""

import re
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from descent_client.client import DescentClient
from tests.e2e.service import Service
from tests.e2e.test_clients import cli, token_of
from tests.e2e.test_jobs import digits_mlp
from tests.timing import scaled

EVENTS_PER_STREAM = 3
HOP_HEADERS = {"connection", "transfer-encoding", "content-length", "keep-alive", "host"}


class CuttingProxy(socketserver.ThreadingTCPServer):
    """HTTP/1.1 in front of ``upstream``, one request a connection. An event stream is cut
    after EVENTS_PER_STREAM events: the body (delimited by the connection's close) just ends."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.upstream = httpx.Client(base_url=upstream, timeout=scaled(60))
        self.streams: list[str | None] = []  # each event stream's Last-Event-ID

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ProxyHandler(socketserver.StreamRequestHandler):
    server: CuttingProxy

    def handle(self) -> None:
        method, target, _ = self.rfile.readline().decode().split(" ", 2)
        headers: dict[str, str] = {}
        while (line := self.rfile.readline().decode().strip()) != "":
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        body = self.rfile.read(int(headers.get("content-length", 0)))
        forwarded = {k: v for k, v in headers.items() if k not in HOP_HEADERS}
        request = self.server.upstream.build_request(method, target, headers=forwarded,
                                                     content=body)  # fmt: skip
        is_stream = target.split("?")[0].endswith("/events")
        if is_stream:
            self.server.streams.append(headers.get("last-event-id"))
        response = self.server.upstream.send(request, stream=True)
        try:
            head = [f"HTTP/1.1 {response.status_code} {response.reason_phrase}"]
            head += [f"{k}: {v}" for k, v in response.headers.items() if k not in HOP_HEADERS]
            self.wfile.write(("\r\n".join([*head, "Connection: close", "", ""])).encode())
            buffer, events = b"", 0
            for chunk in response.iter_raw():
                if not is_stream:
                    self.wfile.write(chunk)
                    continue
                buffer += chunk
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    self.wfile.write(block + b"\n\n")
                    self.wfile.flush()
                    events += block.startswith((b"id:", b"retry:"))
                    if events >= EVENTS_PER_STREAM:
                        self.connection.shutdown(socket.SHUT_RDWR)  # the proxy's timeout
                        return
        finally:
            response.close()


@pytest.fixture
def proxy(embedded_service: Service) -> Iterator[CuttingProxy]:
    server = CuttingProxy(embedded_service.url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        server.upstream.close()


def test_the_client_reconnects_a_cut_stream_and_gets_every_epoch_once(
    embedded_service: Service, proxy: CuttingProxy
) -> None:
    job = embedded_service.submit(digits_mlp(name="cut-stream", training={"epochs": 12}))
    epochs: list[int] = []
    statuses: list[str] = []
    with DescentClient(proxy.url, token_of(embedded_service)) as client:
        final = client.wait(
            job["id"],
            on_epoch=lambda e: epochs.append(e["epoch"]),
            on_status=lambda j: statuses.append(j["status"]),
        )
    assert final["status"] == "succeeded" and final["epoch"] == 12
    assert epochs == list(range(1, 13))
    assert statuses[-1] == "succeeded" and statuses.count("succeeded") == 1
    # At least 14 events (statuses and 12 epochs), 3 a stream: cut 4 times at least, and
    # each reconnect named the last event it had got.
    assert len(proxy.streams) >= 5 and proxy.streams[0] is None
    assert all(re.fullmatch(r"\d+:[a-z]+", last or "") for last in proxy.streams[1:])
    resumed = [int(last.split(":")[0]) for last in proxy.streams[1:] if last]
    assert resumed == sorted(resumed) and resumed[-1] <= 12


def test_descent_follow_reconnects_a_cut_stream(
    embedded_service: Service, proxy: CuttingProxy, tmp_path: Path
) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: cut-follow\n"
        "dataset: {name: digits, val_fraction: 0.2, seed: 0}\n"
        "model: {arch: mlp, hidden: [16]}\n"
        "training: {epochs: 9, batch_size: 64, seed: 0}\n"
    )
    embedded_service.url, original = proxy.url, embedded_service.url  # the CLI's DESCENT_URL
    try:
        run = cli(embedded_service, "submit", str(spec), "--follow", cwd=tmp_path)
    finally:
        embedded_service.url = original
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[1].startswith("cut-follow (")
    epochs = re.findall(r"^epoch\s+(\d+)/9 \[", run.stderr, flags=re.M)
    assert epochs == [str(e) for e in range(1, 10)], run.stderr
    assert len(proxy.streams) >= 4

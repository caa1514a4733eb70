"""A real S3 API over HTTP for the tests: moto's standalone server in a subprocess of its own
(never an in-process mock of the SDK), and a fresh bucket per use.

moto is in the test extra: under CI=true these tests run; they never skip.
"""

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.service import free_port
from tests.timing import wait_for

# Credentials the server accepts (moto takes any); never real ones.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "descent-test",
    "AWS_SECRET_ACCESS_KEY": "descent-test-secret",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class S3Server:
    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.folder / "s3.log", "ab")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ | CREDENTIALS,
        )

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the S3 server exited {self.process.returncode}")
            try:
                return httpx.get(f"{self.url}/moto-api/", timeout=2).status_code < 500
            except httpx.TransportError:
                return False

        wait_for(f"the S3 server on port {self.port}", up, 60, interval=0.1,
                 detail=lambda: (self.folder / "s3.log").read_text(errors="replace"))  # fmt: skip

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_REGION"],
        )

    def bucket(self) -> str:
        """A new, empty bucket."""
        name = f"descent-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, bucket: str, prefix: str = "artifacts") -> dict[str, str]:
        """What a process of the service needs to store its artifacts in ``bucket``."""
        return CREDENTIALS | {
            "DESCENT_ARTIFACTS_URL": f"s3://{bucket}/{prefix}",
            "DESCENT_S3_ENDPOINT_URL": self.url,
        }


@contextmanager
def s3_server(folder: Path) -> Iterator[S3Server]:
    server = S3Server(folder)
    try:
        server.start()
        yield server
    finally:
        server.stop()

"""The artifact store in S3-compatible object storage (AWS S3, Ceph RGW, SeaweedFS, Garage,
MinIO, ...), through boto3.

``artifacts_url = s3://bucket/prefix`` names where; credentials and region come from the
standard AWS variables and files (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``, ``AWS_PROFILE``, an instance role, ...); ``s3_endpoint_url`` (or boto3's own
``AWS_ENDPOINT_URL``) points at a server other than AWS.

Files go up and down with boto3's managed transfers (multipart, several parts at once, each
part retried); an object carries its sha256 in its metadata (``x-amz-meta-sha256``), and a
file fetched with a recorded sha256 is checked before it is used. A process's local folder
(``artifacts_dir``) holds only files being written or read: stored keys never change, so a
fetched upload may stay there as a cache.
"""

import functools
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from descent.settings import Settings
from store.artifacts import CHUNK, ChecksumMismatch, LocalArtifacts, ObjectInfo, file_sha256

MISSING = {"404", "NoSuchKey", "NotFound"}


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix")``."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"artifacts_url must look like s3://bucket/prefix, not {url!r}")
    return parts.netloc, parts.path.strip("/")


@functools.cache
def _client(endpoint_url: str | None, addressing_style: str, pool: int, pid: int) -> Any:
    """One client per process and configuration (clients are thread-safe; not fork-safe,
    hence the pid in the key)."""
    config = Config(
        # payload_signing_enabled False: the body is not hashed a second time for SigV4 over
        # plain HTTP (an endpoint inside the cluster); over HTTPS botocore already sends it
        # unsigned. Each object carries its sha256, checked on reads where the service
        # recorded one (weights, uploads, exports).
        s3={"addressing_style": addressing_style, "payload_signing_enabled": False},
        signature_version="s3v4",  # presigned URLs too (SigV2 is gone from most regions)
        retries={"mode": "standard", "max_attempts": 5},
        max_pool_connections=pool,
        # boto3 >= 1.36 sends CRC checksums on every upload by default, which several
        # S3-compatible servers refuse; the sha256 of each file is checked here instead.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


class S3Artifacts(LocalArtifacts):
    """Keys as in the local folder, stored under ``prefix/`` in ``bucket``; the local folder
    (``root``) is scratch space."""

    remote = True

    def __init__(
        self,
        root: Path,
        bucket: str,
        prefix: str,
        *,
        client: Any,
        presign_client: Any = None,
        transfer: TransferConfig | None = None,
    ) -> None:
        super().__init__(root)
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = client
        self.presign_client = presign_client or client
        self.transfer = transfer or TransferConfig()

    @classmethod
    def from_settings(cls, settings: Settings) -> "S3Artifacts":
        assert settings.artifacts_dir is not None
        bucket, prefix = parse_url(settings.artifacts_url)
        style, pool = settings.s3_addressing_style, settings.s3_max_concurrency + 10
        client = _client(settings.s3_endpoint_url or None, style, pool, os.getpid())
        public = settings.s3_public_endpoint_url
        presign = _client(public, style, pool, os.getpid()) if public else client
        chunk = settings.s3_multipart_chunk_mb * (1 << 20)
        transfer = TransferConfig(
            multipart_threshold=chunk,
            multipart_chunksize=chunk,
            max_concurrency=settings.s3_max_concurrency,
        )
        return cls(
            settings.artifacts_dir, bucket, prefix, client=client, presign_client=presign,
            transfer=transfer,
        )  # fmt: skip

    def key(self, relative: str) -> str:
        self.path(relative)  # refuses names that climb out of the store
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def publish(self, path: Path, sha256: str | None = None) -> str:
        """Upload the local file under its key (multipart when large), then delete it."""
        relative = self.relative(path)
        self.put(path, relative, sha256)
        path.unlink(missing_ok=True)
        return relative

    def write(self, relative: str, data: bytes, sha256: str | None = None) -> str:
        """Upload ``data`` from memory (no local file): what a checkpoint writer holds."""
        self.client.upload_fileobj(
            io.BytesIO(data),
            self.bucket,
            self.key(relative),
            ExtraArgs={"Metadata": {"sha256": sha256 or hashlib.sha256(data).hexdigest()}},
            Config=self.transfer,
        )
        return relative

    def put(self, path: Path, relative: str, sha256: str | None = None) -> None:
        sha256 = sha256 or file_sha256(path)
        self.client.upload_file(
            str(path),
            self.bucket,
            self.key(relative),
            ExtraArgs={"Metadata": {"sha256": sha256}},
            Config=self.transfer,
        )

    @contextmanager
    def fetch(self, key: str, sha256: str | None = None) -> Iterator[Path]:
        """A temporary local copy of the file, checked against ``sha256`` when given."""
        folder = self.root / ".fetch"
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=Path(key).suffix)
        os.close(fd)
        try:
            self._download(key, Path(tmp), sha256)
            yield Path(tmp)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def cached(self, key: str, sha256: str | None = None) -> Path:
        """A local copy of the file kept under ``path(key)`` (fetched once per process's
        folder: a key's content never changes), checked against ``sha256`` when fetched."""
        path = self.path(key)
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            self._download(key, Path(tmp), sha256)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path

    def _download(self, key: str, target: Path, sha256: str | None) -> None:
        try:
            self.client.download_file(self.bucket, self.key(key), str(target), Config=self.transfer)
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(f"{key} is not in the artifact store") from None
            raise
        if sha256 is not None and file_sha256(target) != sha256:
            raise ChecksumMismatch(f"{key} does not match its recorded sha256")

    def keys(self, prefix: str) -> list[str]:
        """Stored keys under ``prefix`` (a folder name), and local files there not yet stored."""
        found = set(super().keys(prefix))
        start = len(self.prefix) + 1 if self.prefix else 0
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.key(prefix).rstrip("/") + "/"
        )
        for page in pages:
            found.update(item["Key"][start:] for item in page.get("Contents", ()))
        return sorted(found)

    def info(self, key: str) -> ObjectInfo | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(key))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        return ObjectInfo(
            head["ContentLength"], head["LastModified"].timestamp(), head["ETag"].strip('"')
        )

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes from ``start`` to ``end`` (inclusive), streamed from one ranged GET."""
        span = f"bytes={start}-{'' if end is None else end}"
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(key), Range=span)
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(f"{key} is not in the artifact store") from None
            raise
        stream = body["Body"]
        try:
            yield from stream.iter_chunks(CHUNK)
        finally:
            stream.close()

    def presigned_url(self, key: str, filename: str, expires: int) -> str | None:
        return self.presign_client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.key(key),
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
                "ResponseContentType": "application/octet-stream",
            },
            ExpiresIn=expires,
        )

    def delete(self, key: str) -> None:
        super().delete(key)  # a local copy, if any
        self.client.delete_object(Bucket=self.bucket, Key=self.key(key))


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in MISSING

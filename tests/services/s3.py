"""Local S3 (moto server) on 127.0.0.1, used through s3fs with explicit credentials.

Two processes, both stopped by PID:

* ``moto_server`` on a private free port: holds the buckets/objects in memory;
* a small TCP forwarder (:mod:`tests.services.tcp_proxy`) on the public port, which is what
  ``endpoint_url`` points at.

``S3Service.stop()`` kills the forwarder: the endpoint refuses connections and in-flight requests
are cut, exactly like an S3 endpoint going down, while moto keeps its data, so a test can
``start()`` it again (same port) and check that a resumed write completes.
``stop(kill_backend=True)`` also stops moto (all data lost); ``start()`` brings back whatever is down.

No ``AWS_*`` variables are exported: pass :attr:`S3Service.storage_options` to fsspec/s3fs (or
:meth:`S3Service.env` to a subprocess, :meth:`S3Service.gdal_env` to ``rasterio.Env``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tests.services.ports import (
    LOCALHOST,
    ManagedProcess,
    ServiceUnavailable,
    free_port,
    http_ok,
    port_open,
    wait_until,
)

REGION = "us-west-2"  # NB: us-east-1 breaks s3fs.mkdir (no LocationConstraint handling)
ACCESS_KEY = "aomtest-key"
SECRET_KEY = "aomtest-secret"


def _moto_argv(port: int) -> list[str]:
    cli = Path(sys.executable).parent / "moto_server"
    if cli.exists():
        return [str(cli), "-H", LOCALHOST, "-p", str(port)]
    if importlib.util.find_spec("moto") is not None and importlib.util.find_spec("flask") is not None:
        return [sys.executable, "-m", "moto.server", "-H", LOCALHOST, "-p", str(port)]
    raise ServiceUnavailable("moto[server] is not installed (no moto_server CLI next to the interpreter)")


@dataclass
class S3Service:
    """A running local S3 endpoint. Use as a context manager or call :meth:`start`/:meth:`stop`."""

    endpoint_url: str = ""
    key: str = ACCESS_KEY
    secret: str = SECRET_KEY
    storage_options: dict[str, Any] = field(default_factory=dict)
    region: str = REGION
    port: int = 0
    backend_port: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    workdir: Path | None = None
    latency_ms: float = 0.0
    """Delay the endpoint adds before forwarding each chunk a client sends (about one per request)."""
    _moto: ManagedProcess | None = field(default=None, repr=False)
    _proxy: ManagedProcess | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> S3Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> S3Service:
        """Start moto and the endpoint (whichever is not running). Same ports on restart."""
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="aom-s3-"))
        if not self.port:
            self.port = free_port()
            self.backend_port = free_port()
            self.endpoint_url = f"http://{LOCALHOST}:{self.port}"
            self.storage_options = {
                "key": self.key,
                "secret": self.secret,
                "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
            }
        try:
            if self._moto is None or not self._moto.running:
                t0 = time.perf_counter()
                self._moto = ManagedProcess(
                    "moto_server",
                    _moto_argv(self.backend_port),
                    log_path=self.workdir / "moto.log",
                    env=_clean_env(),
                    cwd=self.workdir,
                )
                wait_until(
                    lambda: http_ok(f"http://{LOCALHOST}:{self.backend_port}/moto-api/"),
                    timeout=60,
                    what="moto_server",
                    proc=self._moto,
                )
                self.timings["moto_start"] = time.perf_counter() - t0
            if self._proxy is None or not self._proxy.running:
                t0 = time.perf_counter()
                self._proxy = ManagedProcess(
                    "s3-endpoint-proxy",
                    [
                        sys.executable,
                        str(Path(__file__).with_name("tcp_proxy.py")),
                        str(self.port),
                        str(self.backend_port),
                        str(self.latency_ms / 1000.0),
                    ],
                    log_path=self.workdir / "proxy.log",
                    env=_clean_env(),
                    cwd=self.workdir,
                )
                wait_until(
                    lambda: port_open(LOCALHOST, self.port),
                    timeout=30,
                    what="S3 endpoint proxy",
                    proc=self._proxy,
                )
                self.timings["endpoint_start"] = time.perf_counter() - t0
        except BaseException:
            self.close()
            raise
        return self

    def stop(self, kill_backend: bool = False) -> None:
        """Take the endpoint down (connections refused/reset). Data survives unless ``kill_backend``."""
        if self._proxy is not None:
            self._proxy.stop(timeout=5)
            self._proxy = None
        if kill_backend and self._moto is not None:
            self._moto.stop(timeout=10)
            self._moto = None

    def close(self) -> None:
        """Stop everything and remove the work dir."""
        self.stop(kill_backend=True)
        if self.workdir is not None and os.environ.get("AOM_TEST_KEEP_SERVICE_DIRS") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    @property
    def running(self) -> bool:
        return bool(self._proxy and self._proxy.running and self._moto and self._moto.running)

    # ------------------------------------------------------------------ clients
    def filesystem(self, **overrides: Any):  # -> s3fs.S3FileSystem
        """An s3fs filesystem on this endpoint (not from fsspec's instance cache)."""
        import s3fs

        opts = {**self.storage_options, "skip_instance_cache": True, **overrides}
        return s3fs.S3FileSystem(**opts)

    def boto3_client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name=self.region,
        )

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"aom-test-{uuid.uuid4().hex[:12]}"
        self.boto3_client().create_bucket(
            Bucket=name, CreateBucketConfiguration={"LocationConstraint": self.region}
        )
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it (no-op if it does not exist)."""
        client = self.boto3_client()
        with contextlib.suppress(client.exceptions.NoSuchBucket):
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=name):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
            client.delete_bucket(Bucket=name)

    def env(self) -> dict[str, str]:
        """``AWS_*`` variables for a *subprocess* (botocore/s3fs/awscli) talking to this endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    def gdal_env(self) -> dict[str, str]:
        """GDAL config for /vsis3/ on this endpoint, as environment variables of a *subprocess*.

        In-process rasterio refuses credentials as ``Env`` options: use :meth:`rasterio_env`.
        """
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_REGION": self.region,
            "AWS_S3_ENDPOINT": f"{LOCALHOST}:{self.port}",
            "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
        }

    def rasterio_env(self, **options: Any):  # -> rasterio.Env
        """``with s3.rasterio_env(): rasterio.open("s3://bucket/x.tif")`` reads through this endpoint."""
        import rasterio
        from rasterio.session import AWSSession

        session = AWSSession(
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name=self.region,
            endpoint_url=f"{LOCALHOST}:{self.port}",
        )
        return rasterio.Env(session=session, AWS_HTTPS="NO", AWS_VIRTUAL_HOSTING="FALSE", **options)


@dataclass
class S3Bucket:
    """A fresh bucket on an :class:`S3Service`."""

    name: str
    service: S3Service

    @property
    def url_prefix(self) -> str:
        return f"s3://{self.name}"

    @property
    def storage_options(self) -> dict[str, Any]:
        return self.service.storage_options

    def url(self, *parts: str) -> str:
        """``s3://bucket/part1/part2``."""
        return "/".join([self.url_prefix, *(p.strip("/") for p in parts)])

    @property
    def fs(self):  # -> s3fs.S3FileSystem
        return self.service.filesystem()


class RequestCounter:
    """Counts the HTTP requests an s3fs filesystem sends (``with RequestCounter(fs) as c: ...``;
    ``c.total``, ``c.by_method``), the bytes sent (``c.bytes_sent``: each request's Content-Length)
    and the bytes of objects received (``c.bytes_received``: Content-Length of each GET answered,
    listings not counted), ``c.largest_sent`` (the largest of those Content-Lengths: one request's
    body) and ``c.requests``: ``(method, bucket/key)`` of each. Counted in the client: every request,
    retries included."""

    def __init__(self, fs: Any) -> None:
        from fsspec.asyn import sync

        self.fs = fs
        sync(fs.loop, fs.set_session)  # the client whose events we hook
        self.by_method: dict[str, int] = {}
        self.bytes_sent = self.largest_sent = 0
        self.bytes_received = 0
        self.requests: list[tuple[str, str]] = []
        self._active = False
        fs.s3.meta.events.register("before-send.s3", self._hook)
        fs.s3.meta.events.register("after-call.s3.GetObject", self._got)

    def _hook(self, request: Any, **_: Any) -> None:
        if self._active:
            from urllib.parse import unquote, urlsplit

            self.by_method[request.method] = self.by_method.get(request.method, 0) + 1
            sent = int(request.headers.get("Content-Length") or 0)
            self.bytes_sent += sent
            self.largest_sent = max(self.largest_sent, sent)
            self.requests.append((request.method, unquote(urlsplit(request.url).path).lstrip("/")))

    def _got(self, parsed: Any = None, **_: Any) -> None:
        if self._active and isinstance(parsed, dict):
            self.bytes_received += int(parsed.get("ContentLength") or 0)

    @property
    def total(self) -> int:
        return sum(self.by_method.values())

    def __enter__(self) -> RequestCounter:
        self.by_method = {}
        self.bytes_sent = self.bytes_received = self.largest_sent = 0
        self.requests = []
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._active = False


class _Answer:
    """The HTTP part of an answer a ``before-call`` handler gives botocore instead of sending."""

    def __init__(self, status: int) -> None:
        self.status_code = status
        self.headers: dict[str, str] = {}
        self.content = b""
        self.raw = None


class S3Refusal:
    """Make the s3fs client of ``fs`` answer GETs (another ``operation``: ``"UploadPart"``...) of keys
    ending in ``suffix`` with HTTP ``status`` (the first ``times`` of them after the first ``after``,
    which pass; None: all) as S3 would: botocore raises its ``ClientError`` from the answer and s3fs
    translates it (403: ``PermissionError``; 500: an ``OSError``; s3fs retries a 503 ``SlowDown``
    itself). The pipeline's client is ``pipelines.storage.filesystem(url, options)[0]`` (fsspec's
    instance cache); ``refused`` counts the answers given. ``close()`` (or the end of a ``with``
    block) stops it."""

    CODES: ClassVar[dict[int, str]] = {403: "AccessDenied", 503: "SlowDown", 500: "InternalError"}

    def __init__(
        self,
        fs: Any,
        suffix: str,
        status: int,
        times: int | None = None,
        *,
        operation: str = "GetObject",
        after: int = 0,
    ) -> None:
        from fsspec.asyn import sync

        self.fs, self.suffix, self.status, self.left, self.after = fs, suffix, status, times, after
        self.refused = 0
        self.event = f"before-call.s3.{operation}"
        sync(fs.loop, fs.set_session)
        fs.s3.meta.events.register(self.event, self._hook)

    def _hook(self, params: dict[str, Any], **_: Any) -> Any:
        from urllib.parse import unquote

        if not unquote(str(params.get("url_path", ""))).endswith(self.suffix) or self.left == 0:
            return None
        if self.after > 0:
            self.after -= 1
            return None
        if self.left is not None:
            self.left -= 1
        self.refused += 1
        code = self.CODES.get(self.status, "Error")
        parsed = {
            "Error": {"Code": code, "Message": code},
            "ResponseMetadata": {"HTTPStatusCode": self.status, "HTTPHeaders": {}},
        }
        return _Answer(self.status), parsed

    def close(self) -> None:
        self.fs.s3.meta.events.unregister(self.event, self._hook)

    def __enter__(self) -> S3Refusal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clean_env() -> dict[str, str]:
    """The server processes get no AWS credentials/endpoint from the caller's environment."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}

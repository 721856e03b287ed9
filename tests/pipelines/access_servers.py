"""Local HTTP servers that behave like the real providers' access rules, for tests without internet.

:class:`ProviderServer` runs in a thread of the test process on a free loopback port and serves files
of a folder (with HTTP range requests, as GDAL reads COGs) under one of the providers' access rules:

* ``sas``: Planetary Computer. ``GET /api/sas/v1/token/<collection>`` answers
  ``{"token": ..., "msft:expiry": ...}``; a file read without that token's ``sig`` answers 409
  (``PublicAccessNotPermitted``), with a wrong one 403.
* ``requester-pays``: an S3 path-style endpoint (``/<bucket>/<key>``) that answers 403 unless the
  request is signed (``Authorization: AWS4-HMAC-SHA256 ...``) and carries ``x-amz-request-payer: requester``.
* ``bearer``: NASA Earthdata: 401 unless ``Authorization: Bearer <token>``.
* ``query-key``: an API-key service: 401 without a ``key`` query parameter, 403 unless it is
  :data:`API_KEY` (``registry_yaml`` kind ``api-key`` reads it from :data:`API_KEY_ENV`).
* ``open``: public files.

``force`` queues statuses to answer before the rule applies (``[429, 429]``: throttled twice, then
served), ``deny`` answers 403 to everything until it is set back to False. Every request is kept in
``requests`` (method, path with query, headers) so tests can check what was (not) sent.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

SAS_SIG = "c2VjcmV0LXNpZw"
"""The signature the SAS rule accepts (a stand-in for a real one)."""
SAS_TOKEN = f"st=2030-01-01T00%3A00%3A00Z&se=2030-01-01T01%3A00%3A00Z&sp=rl&sv=2024-05-04&sr=c&sig={SAS_SIG}"
BEARER = "earthdata-test-token"
API_KEY = "k3y/t3st+Secret=="
"""The key the ``query-key`` rule accepts (characters that must be percent-encoded in a query)."""
API_KEY_ENV = "AOM_TEST_CATALOG_API_KEY"


@dataclass
class ProviderServer:
    """One provider (see the module docstring); use :func:`serve`."""

    root: Path
    rule: str = "open"
    force: list[int] = field(default_factory=list)
    deny: bool = False
    token_expiry_s: float = 3600.0
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    token_requests: int = 0
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def href(self, path: Path) -> str:
        """The URL of a file under ``root`` (``s3://`` style for requester pays)."""
        rel = path.resolve().relative_to(self.root.resolve()).as_posix()
        if self.rule == "requester-pays":
            return f"s3://{rel}"
        return f"{self.url}/{rel}"

    def file_requests(self) -> list[tuple[str, str, dict[str, str]]]:
        return [r for r in self.requests if "/api/sas/" not in r[1]]

    # -------------------------------------------------------------- answering
    def answer(self, handler: BaseHTTPRequestHandler, head: bool) -> None:
        parts = urlsplit(handler.path)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            self.requests.append((handler.command, handler.path, headers))
            forced = self.force.pop(0) if self.force else None
        if forced is not None:
            return _send(handler, forced, b"forced", {"Retry-After": "0"} if forced == 429 else {})
        if parts.path.startswith("/api/sas/v1/token/"):
            with self._lock:
                self.token_requests += 1
            expiry = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.token_expiry_s)
            body = json.dumps({"msft:expiry": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"), "token": SAS_TOKEN})
            return _send(handler, 200, body.encode(), {"Content-Type": "application/json"})
        if self.deny:
            return _send(handler, 403, b"<Error><Code>AccessDenied</Code></Error>")
        refused = self._refused(parts.query, headers)
        if refused is not None:
            return _send(handler, refused, b"<Error><Code>AuthenticationFailed</Code></Error>")
        path = (self.root / parts.path.lstrip("/")).resolve()
        if not path.is_file() or self.root.resolve() not in path.parents:
            return _send(handler, 404, b"<Error><Code>NoSuchKey</Code></Error>")
        data = path.read_bytes()
        rng = headers.get("range")
        if rng and rng.startswith("bytes="):
            start_s, _, end_s = rng[len("bytes=") :].partition("-")
            start = int(start_s)
            end = min(int(end_s) if end_s else len(data) - 1, len(data) - 1)
            chunk = data[start : end + 1]
            extra = {"Content-Range": f"bytes {start}-{end}/{len(data)}", "Accept-Ranges": "bytes"}
            return _send(handler, 206, chunk, extra, head=head)
        return _send(handler, 200, data, {"Accept-Ranges": "bytes"}, head=head)

    def _refused(self, query: str, headers: dict[str, str]) -> int | None:
        if self.rule == "sas":
            sig = parse_qs(query).get("sig")
            if not sig:
                return 409
            return None if sig == [SAS_SIG] else 403
        if self.rule == "requester-pays":
            signed = headers.get("authorization", "").startswith("AWS4-HMAC-SHA256")
            return None if signed and headers.get("x-amz-request-payer") == "requester" else 403
        if self.rule == "bearer":
            return None if headers.get("authorization") == f"Bearer {BEARER}" else 401
        if self.rule == "query-key":
            key = parse_qs(query).get("key")
            if not key:
                return 401
            return None if key == [API_KEY] else 403
        return None


def _send(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes,
    headers: dict[str, str] | None = None,
    head: bool = False,
) -> None:
    handler.send_response(status)
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if not head:
        handler.wfile.write(body)


@contextmanager
def serve(root: Path, rule: str = "open", **kw: Any) -> Iterator[ProviderServer]:
    """A :class:`ProviderServer` running on a free loopback port for the ``with`` block."""
    server = ProviderServer(root=root, rule=rule, **kw)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.answer(self, head=False)

        def do_HEAD(self) -> None:
            server.answer(self, head=True)

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def registry_yaml(server: ProviderServer, catalog: str, kind: str, collection: str = "landsat-c2-l2") -> str:
    """A registry file: ``catalog`` with the access ``kind`` pointing at ``server``, publishing the
    sample catalog's ``collection`` entry (same assets, scale/offset and mask)."""
    from pipelines.registry import load_registry

    cs = load_registry().collection(collection, "sample")
    access: dict[str, Any] = {"kind": kind}
    if kind == "sas-token":
        access.update(token_url=f"{server.url}/api/sas/v1/token/{{collection}}", sign_hosts=["127.0.0.1"])
    elif kind == "requester-pays":
        access.update(region="us-west-2")
    elif kind == "earthdata":
        access.update(login_host="urs.earthdata.test.invalid", key_env="AOM_TEST_EARTHDATA_TOKEN")
    elif kind == "api-key":
        access.update(query_env={"key": API_KEY_ENV}, sign_hosts=["127.0.0.1"])
    mask: dict[str, Any] = {
        "kind": cs.mask.kind,
        "asset": cs.mask.asset,
        "invalid_bits": list(cs.mask.invalid_bits),
        "invalid_values": list(cs.mask.invalid_values),
        "fill_value": cs.mask.fill_value,
    }
    doc = {
        "catalogs": {catalog: {"kind": "stac-api", "url": f"{server.url}/stac", "access": access}},
        "collections": [
            {
                "catalog": catalog,
                "collection": collection,
                "sensor": cs.sensor.name,
                "dtype": cs.dtype,
                "nodata": cs.nodata,
                "scale": cs.scale,
                "offset": cs.offset,
                "assets": dict(cs.assets),
                "mask": {k: v for k, v in mask.items() if v not in (None, [])},
            }
        ],
    }
    return json.dumps(doc)  # JSON is YAML


# ---------------------------------------------------------------------------------------------
# Recorded STAC API responses, replayed


@dataclass
class StacReplay:
    """A STAC API answering with recorded pages (``../shared/data/stac-items/responses``).

    The page a request gets is chosen by its paging token only (``next`` in a POST body, ``token``
    or ``cursor`` in the query): no token -> the first page; the token of page i's ``next`` link ->
    page i + 1; a token past the recorded pages -> an empty last page. Every recorded URL of
    ``real_base`` is rewritten to this server. ``force`` queues statuses to answer first.
    """

    real_base: str
    landing: dict[str, Any]
    pages: list[dict[str, Any]]
    collections: list[dict[str, Any]] = field(default_factory=list)
    force: list[int] = field(default_factory=list)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _text(self, obj: Any) -> bytes:
        return json.dumps(obj).replace(self.real_base.rstrip("/"), self.url).encode()

    def _page_for(self, token: str | None) -> dict[str, Any]:
        if token is None:
            return self.pages[0]
        for i, page in enumerate(self.pages):
            if token in json.dumps(next_link(page) or {}):
                if i + 1 < len(self.pages):
                    return self.pages[i + 1]
                break
        return {"type": "FeatureCollection", "features": [], "links": []}

    def answer(self, handler: BaseHTTPRequestHandler, body: Any) -> None:
        parts = urlsplit(handler.path)
        self.requests.append((handler.command, handler.path, body))
        if self.force:
            status = self.force.pop(0)
            return _send(
                handler, status, b'{"code": "forced"}', {"Retry-After": "0"} if status == 429 else {}
            )
        path = parts.path[len("/api") :].rstrip("/")
        query = parse_qs(parts.query)
        if path == "":
            return _send(handler, 200, self._text(self.landing), {"Content-Type": "application/json"})
        if path == "/conformance":
            return _send(handler, 200, self._text({"conformsTo": self.landing.get("conformsTo", [])}))
        if path == "/collections":
            return _send(handler, 200, self._text({"collections": self.collections, "links": []}))
        if path.startswith("/collections/") and not path.endswith("/items"):
            cid = path.split("/")[2]
            found = [c for c in self.collections if c.get("id") == cid]
            return _send(
                handler, 200 if found else 404, self._text(found[0] if found else {"code": "NotFound"})
            )
        if path == "/search" or path.endswith("/items"):
            token = (body or {}).get("next") if isinstance(body, dict) else None
            token = token or next(iter(query.get("token") or query.get("cursor") or []), None)
            page = self._page_for(token)
            return _send(handler, 200, self._text(page), {"Content-Type": "application/geo+json"})
        return _send(handler, 404, b'{"code": "NotFound"}')


def next_link(page: dict[str, Any]) -> dict[str, Any] | None:
    return next((link for link in page.get("links") or [] if link.get("rel") == "next"), None)


@contextmanager
def serve_stac(replay: StacReplay) -> Iterator[StacReplay]:
    """Run ``replay`` on a free loopback port for the ``with`` block."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            replay.answer(self, None)

        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            replay.answer(self, json.loads(raw) if raw else None)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    replay.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield replay
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)

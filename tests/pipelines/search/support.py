"""Shared helpers for the search tests (no tests here): a controlled item set, writers for the
three local formats, and a tiny fake STAC API on 127.0.0.1 that can misbehave on purpose."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

S2 = "sentinel-2-l2a"
LS = "landsat-c2-l2"
HLS = "hls2-s30"


def polygon(w: float, s: float, e: float, n: float) -> dict:
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def make_item(
    iid: str,
    collection: str,
    bbox: tuple[float, float, float, float],
    when: str,
    *,
    cloud: float | None = 10.0,
    epsg: int | None = None,
    epsg_style: str = "code",
    updated: str | None = None,
    created: str | None = None,
    geometry: dict | None = None,
) -> dict:
    props: dict[str, Any] = {"datetime": when, "platform": "sentinel-2a" if collection == S2 else "landsat-8"}
    if cloud is not None:
        props["eo:cloud_cover"] = cloud
    if epsg is not None:
        if epsg_style == "code":
            props["proj:code"] = f"EPSG:{epsg}"
        else:
            props["proj:epsg"] = epsg
    if updated is not None:
        props["updated"] = updated
    if created is not None:
        props["created"] = created
    w, s, e, n = bbox
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
        ],
        "id": iid,
        "collection": collection,
        "bbox": [w, s, e, n],  # west > east: across the antimeridian, as STAC writes it
        "geometry": geometry or polygon(w, s, e, n),
        "properties": props,
        "assets": {
            "red": {
                "href": f"s3://aom-test-data/{collection}/{iid}/B04.tif",
                "type": "image/tiff; application=geotiff",
                "roles": ["data"],
            },
        },
        "links": [],
    }


def utm_items() -> list[dict]:
    """Items near 6°E 45°N: UTM 31N west of 6°E, UTM 32N east of it, three collections."""
    return [
        # zone 31 (west of 6°E)
        make_item(
            "S2A_31TGL_20230105",
            S2,
            (5.0, 44.5, 5.9, 45.5),
            "2023-01-05T10:30:00Z",
            cloud=3.5,
            epsg=32631,
            updated="2023-01-06T00:00:00Z",
        ),
        make_item(
            "S2A_31TGL_20230315",
            S2,
            (5.0, 44.5, 5.9, 45.5),
            "2023-03-15T10:30:00Z",
            cloud=55.0,
            epsg=32631,
            epsg_style="epsg",
            updated="2023-03-16T00:00:00Z",
        ),
        make_item(
            "S2A_31TGL_20230620",
            S2,
            (5.0, 44.5, 5.9, 45.5),
            "2023-06-20T10:30:00.250Z",
            cloud=20.0,
            epsg=32631,
            created="2023-06-21T00:00:00Z",
        ),
        # zone 32 (east of 6°E)
        make_item(
            "S2B_32TLR_20230105",
            S2,
            (6.1, 44.5, 7.0, 45.5),
            "2023-01-05T10:30:05Z",
            cloud=8.0,
            epsg=32632,
            updated="2023-01-06T00:00:00Z",
        ),
        make_item(
            "S2B_32TLR_20230710",
            S2,
            (6.1, 44.5, 7.0, 45.5),
            "2023-07-10T10:30:05Z",
            cloud=0.0,
            epsg=32632,
            epsg_style="epsg",
            updated="2023-08-01T12:00:00Z",
        ),
        make_item(
            "S2B_32TLR_20231201", S2, (6.1, 44.5, 7.0, 45.5), "2023-12-01T10:30:05Z", cloud=None, epsg=32632
        ),
        # landsat straddles the zone boundary
        make_item(
            "LC09_196029_20230210",
            LS,
            (5.2, 44.2, 7.6, 46.0),
            "2023-02-10T10:15:00Z",
            cloud=12.5,
            epsg=32631,
            epsg_style="epsg",
            created="2023-02-12T00:00:00Z",
        ),
        make_item(
            "LC08_196029_20230922",
            LS,
            (5.2, 44.2, 7.6, 46.0),
            "2023-09-22T10:15:00Z",
            cloud=31.0,
            epsg=32631,
            updated="2023-09-25T00:00:00Z",
        ),
        # HLS, one outside the AOI used by tests
        make_item(
            "HLS.S30.T32TLR.2023140",
            HLS,
            (6.1, 44.5, 7.0, 45.5),
            "2023-05-20T10:30:00Z",
            cloud=4.0,
            epsg=32632,
            updated="2023-05-22T00:00:00Z",
        ),
        make_item(
            "HLS.S30.T33TUL.2023140",
            HLS,
            (12.1, 44.5, 13.0, 45.5),
            "2023-05-20T10:30:00Z",
            cloud=4.0,
            epsg=32633,
            updated="2023-05-22T00:00:00Z",
        ),
        # 2024: outside the 2023 interval
        make_item(
            "S2B_32TLR_20240110",
            S2,
            (6.1, 44.5, 7.0, 45.5),
            "2024-01-10T10:30:05Z",
            cloud=1.0,
            epsg=32632,
            updated="2024-01-11T00:00:00Z",
        ),
    ]


def antimeridian_items() -> list[dict]:
    """Fiji: one item each side of 180° and one footprint split across it (a MultiPolygon)."""
    split = {
        "type": "MultiPolygon",
        "coordinates": [
            polygon(179.6, -17.5, 180.0, -16.5)["coordinates"],
            polygon(-180.0, -17.5, -179.6, -16.5)["coordinates"],
        ],
    }
    return [
        make_item(
            "S2A_60KWF_20230301",
            S2,
            (178.8, -17.5, 179.7, -16.5),
            "2023-03-01T22:20:00Z",
            cloud=5.0,
            epsg=32760,
            updated="2023-03-02T00:00:00Z",
        ),
        make_item(
            "S2A_01KAA_20230301",
            S2,
            (-179.8, -17.5, -178.9, -16.5),
            "2023-03-01T22:20:00Z",
            cloud=5.0,
            epsg=32701,
            updated="2023-03-02T00:00:00Z",
        ),
        make_item(
            "S2A_60KZF_20230301",
            S2,
            (179.6, -17.5, -179.6, -16.5),
            "2023-03-01T22:20:00Z",
            cloud=5.0,
            epsg=32760,
            updated="2023-03-02T00:00:00Z",
            geometry=split,
        ),
        # far from the antimeridian, same latitude
        make_item(
            "S2A_36KWF_20230301",
            S2,
            (33.0, -17.5, 34.0, -16.5),
            "2023-03-01T08:00:00Z",
            cloud=5.0,
            epsg=32736,
            updated="2023-03-02T00:00:00Z",
        ),
    ]


def all_items() -> list[dict]:
    return utm_items() + antimeridian_items()


def collection_dict(cid: str) -> dict:
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": cid,
        "description": f"test collection {cid}",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
            "temporal": {"interval": [["2020-01-01T00:00:00Z", None]]},
        },
        "links": [],
    }


def collection_ids(items: list[dict]) -> list[str]:
    return sorted({i["collection"] for i in items})


def collections_of(items: list[dict]) -> list[dict]:
    return [collection_dict(c) for c in collection_ids(items)]


# ------------------------------------------------------------------------------------------ writers


def _write(path: Path, write: Callable[[Path], object]) -> Path:
    """The one way every writer below writes a file: its folders first, then ``write(path)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)
    return path


def _write_json(path: Path, doc: dict) -> Path:
    return _write(path, lambda p: p.write_text(json.dumps(doc)))


def write_ndjson(items: list[dict], path: Path) -> Path:
    return _write(path, lambda p: p.write_text("".join(json.dumps(i) + "\n" for i in items)))


def write_parquet(items: list[dict], path: Path) -> Path:
    from stac_geoparquet.arrow import parse_stac_items_to_arrow, to_parquet

    return _write(path, lambda p: to_parquet(parse_stac_items_to_arrow(items), p))


def write_static_catalog(items: list[dict], root: Path) -> Path:
    """A self-contained static catalog: catalog.json -> <collection>/collection.json -> items, all
    links relative (what pystac's SELF_CONTAINED layout writes)."""
    catalog: dict[str, Any] = {
        "type": "Catalog",
        "stac_version": "1.0.0",
        "id": "test",
        "description": "test catalog",
        "links": [],
    }
    catalog["links"].append({"rel": "root", "href": "./catalog.json", "type": "application/json"})
    for cid in collection_ids(items):
        coll = collection_dict(cid)
        coll["links"] = [
            {"rel": "root", "href": "../catalog.json"},
            {"rel": "parent", "href": "../catalog.json"},
        ]
        for item in (i for i in items if i["collection"] == cid):
            rel = f"./{item['id']}/{item['id']}.json"
            coll["links"].append({"rel": "item", "href": rel, "type": "application/geo+json"})
            out = dict(item)
            out["links"] = [
                {"rel": "root", "href": "../../catalog.json"},
                {"rel": "parent", "href": "../collection.json"},
                {"rel": "collection", "href": "../collection.json"},
            ]
            _write_json(root / cid / item["id"] / f"{item['id']}.json", out)
        _write_json(root / cid / "collection.json", coll)
        catalog["links"].append(
            {"rel": "child", "href": f"./{cid}/collection.json", "type": "application/json"}
        )
    return _write_json(root / "catalog.json", catalog)


def write_all_formats(items: list[dict], folder: Path) -> dict[str, Path]:
    return {
        "static": write_static_catalog(items, folder / "static"),
        "ndjson": write_ndjson(items, folder / "items.ndjson"),
        "parquet": write_parquet(items, folder / "items.parquet"),
    }


# ------------------------------------------------------------------------------------------ fake API


class FakeStacApi:
    """A minimal STAC API (landing page + POST /search with paging) on 127.0.0.1.

    ``fail_first``: statuses answered to the first requests (e.g. ``[429, 429]``), then normal
    service; ``fail_always``: answer every request with this status; ``delay_first``: seconds the
    first request is held (to trip a client timeout; it is let go unanswered when the server
    stops; ``first_answered`` is set when the hold ran out and it is answered). It returns every item on /search (the client
    filters); ``requests`` records (method, path) of each request.
    """

    def __init__(
        self,
        items: list[dict] | None = None,
        *,
        fail_first: list[int] | None = None,
        fail_always: int | None = None,
        delay_first: float = 0.0,
        retry_after: str | None = None,
        conforms: tuple[str, ...] = (
            "core",
            "collections",
            "ogcapi-features",
            "item-search",
            "item-search#query",
            "item-search#filter",
        ),
        page_size: int = 2,
    ) -> None:
        self.items = list(items or [])
        self.fail_first = list(fail_first or [])
        self.fail_always = fail_always
        self.delay_first = delay_first
        self.retry_after = retry_after
        self.conforms = conforms
        self.page_size = page_size
        self.requests: list[tuple[str, str]] = []
        self.auth: list[str] = []  # Authorization headers received (to prove a client sent them)
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.first_answered = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def __enter__(self) -> FakeStacApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                api._handle(self, "GET")

            def do_POST(self) -> None:
                api._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._stopping.set()  # a held first request ends now (server_close waits for its thread)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _send(
        self, h: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        with self._lock:
            n = len(self.requests)
            self.requests.append((method, h.path))
            if h.headers.get("Authorization"):
                self.auth.append(str(h.headers["Authorization"]))
            planned = self.fail_first[n] if n < len(self.fail_first) else None
        if n == 0 and self.delay_first:
            self._stopping.wait(self.delay_first)
            if self._stopping.is_set():
                return  # the server stops: no answer
            self.first_answered.set()
        status = self.fail_always or planned
        if status:
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            self._send(h, status, {"code": "Error", "description": f"simulated HTTP {status}"}, headers)
            return
        path = h.path.split("?", 1)[0].rstrip("/")
        if path == "" and method == "GET":
            self._send(h, 200, self._landing())
        elif path == "/collections" and method == "GET":
            self._send(h, 200, {"collections": collections_of(self.items), "links": []})
        elif path == "/search" and method == "POST":
            body = json.loads(raw or b"{}")
            self.bodies.append(body)
            self._send(h, 200, self._page(body))
        else:
            self._send(h, 404, {"code": "NotFound", "description": h.path})

    def _landing(self) -> dict:
        base = "https://api.stacspec.org/v1.0.0"
        conforms = [f"{base}/{c}" for c in self.conforms]
        if "item-search#filter" in self.conforms:
            conforms += [
                "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
                "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
            ]
        return {
            "type": "Catalog",
            "stac_version": "1.0.0",
            "id": "fake",
            "description": "fake STAC API",
            "conformsTo": conforms,
            "links": [
                {"rel": "self", "href": self.url + "/", "type": "application/json"},
                {"rel": "root", "href": self.url + "/", "type": "application/json"},
                {
                    "rel": "search",
                    "href": self.url + "/search",
                    "type": "application/geo+json",
                    "method": "POST",
                },
                {"rel": "data", "href": self.url + "/collections", "type": "application/json"},
            ],
        }

    def _page(self, body: dict) -> dict:
        wanted = set(body.get("collections") or [])
        items = [i for i in self.items if not wanted or i["collection"] in wanted]
        start = int(body.get("token") or 0)
        size = min(int(body.get("limit") or self.page_size), self.page_size)
        page = items[start : start + size]
        links = []
        if start + size < len(items):
            links.append(
                {
                    "rel": "next",
                    "href": self.url + "/search",
                    "method": "POST",
                    "body": {**body, "token": start + size},
                }
            )
        return {"type": "FeatureCollection", "features": page, "links": links}


@contextlib.contextmanager
def fake_api(items: list[dict] | None = None, **kwargs: Any) -> Iterator[FakeStacApi]:
    with FakeStacApi(items, **kwargs) as api:
        yield api

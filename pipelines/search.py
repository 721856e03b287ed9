"""Search STAC items: one interface, two backends.

* **STAC API** (Earth Search, Planetary Computer, NASA CMR-STAC, any pgstac/stac-fastapi) through
  pystac-client, with paging, ``max_items``, dict-form ``query``, CQL2-JSON ``filter`` and retries
  with backoff on 429/5xx/timeouts (:mod:`pipelines.search_api`).
* **Local catalog** (static ``catalog.json``, stac-geoparquet or ndjson; local or object storage),
  read and filtered in process (:mod:`pipelines.search_local`). This is the embedded default:
  catalog ``sample`` = ``.aom/samples/items.parquet`` built by ``aom samples``.

The result is the matching items in canonical order with a content hash over their canonical JSON
(:func:`pipelines.search_filters.items_hash`), so a rerun can prove it found the same thing and an
incremental run can ask :func:`new_items` what changed. Asset hrefs in results are never signed:
sign an in-memory copy with :func:`sign_for_reading` right before reading pixels.

Known traps handled here: pystac-client cannot search a static catalog (filtered in process);
``query`` goes out in dict form only (the list form sends numbers as strings); a bbox with west >
east crosses the antimeridian and is searched as two boxes; ``proj:code`` and ``proj:epsg`` are
both read (:func:`item_epsg`).
"""

from __future__ import annotations

import copy
import io
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pipelines.registry import Registry, load_registry
from pipelines.retry import RetryPolicy
from pipelines.search_filters import (
    FilterError,
    SearchError,
    all_of,
    aoi_geometry,
    attribute_predicates,
    collection_predicate,
    format_time,
    interval_to_api,
    item_epsg,
    item_sort_time,
    item_updated,
    items_hash,
    parse_interval,
    parse_time,
    sort_key,
    spatial_predicate,
    split_bbox,
    temporal_predicate,
    validate_bbox,
)
from pipelines.storage import (
    exists,
    normalise_url,
    read_json,
    redact_url,
    write_bytes_atomic,
    write_json_atomic,
)

__all__ = [
    "DEFAULT_SAMPLE_URL",
    "FilterError",
    "RetryPolicy",
    "SearchError",
    "SearchRequest",
    "SearchResult",
    "item_epsg",
    "items_hash",
    "load_result",
    "new_items",
    "planetary_computer_signer",
    "save_result",
    "search",
    "sign_for_reading",
    "strip_signatures",
]

log = logging.getLogger(__name__)

#: Where ``aom samples`` puts the embedded catalog, relative to the current directory.
DEFAULT_SAMPLE_URL = str(Path(".aom") / "samples" / "items.parquet")
RESULT_FORMAT = "aom-search-result/1"
SIDECAR_SUFFIX = ".meta.json"

Signer = Callable[[dict[str, Any]], dict[str, Any]]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class SearchRequest:
    """What to search for. Lists are accepted and stored as tuples."""

    collections: tuple[str, ...]  # collection ids (registry names) or sensor names of the catalog
    bbox: tuple[float, float, float, float] | None = None  # WGS84; west > east crosses the antimeridian
    intersects: dict | None = None  # GeoJSON geometry (alternative to bbox)
    datetime: str | None = None  # RFC 3339 interval "2023-01-01/2023-12-31" (open ends: "..")
    max_cloud_cover: float | None = None  # eo:cloud_cover <= this; items without it don't match
    updated_since: str | None = None  # RFC 3339 watermark: `updated` (else `created`) after it
    query: dict | None = None  # extra dict-form query {"prop": {"op": value}}
    filter: dict | None = None  # CQL2-JSON
    max_items: int | None = None
    catalog: str = "sample"  # registry catalog name
    sensors: tuple[str, ...] = ()  # sensor names, resolved to this catalog's collections

    def __post_init__(self) -> None:
        if isinstance(self.collections, str):
            object.__setattr__(self, "collections", tuple(c for c in self.collections.split(",") if c))
        object.__setattr__(self, "collections", tuple(self.collections or ()))
        if isinstance(self.sensors, str):
            object.__setattr__(self, "sensors", tuple(s for s in self.sensors.split(",") if s))
        object.__setattr__(self, "sensors", tuple(self.sensors or ()))
        if self.bbox is not None:
            object.__setattr__(self, "bbox", tuple(float(v) for v in self.bbox))

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SearchRequest:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("collections", "sensors", "bbox"):
            if known.get(key) is not None:
                known[key] = tuple(known[key])
        known.setdefault("collections", ())
        return cls(**known)


@dataclass(frozen=True)
class SearchResult:
    items: tuple[dict, ...]  # STAC item dicts, sorted by (collection, datetime, id), hrefs unsigned
    content_hash: str  # hash of the canonical item JSON (pipelines.search_filters.items_hash)
    notes: tuple[str, ...]  # e.g. why empty
    request: SearchRequest | None = field(default=None, compare=False)
    source: str | None = field(default=None, compare=False)  # catalog URL searched (credentials removed)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def count_by_collection(self) -> dict[str, int]:
        return dict(sorted(Counter(str(i.get("collection")) for i in self.items).items()))

    @property
    def count_by_epsg(self) -> dict[str, int]:
        counts = Counter(str(item_epsg(i) or "unknown") for i in self.items)
        return dict(sorted(counts.items()))

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(str(i.get("id")) for i in self.items)


def make_result(
    items: Iterable[Mapping[str, Any]],
    notes: Iterable[str] = (),
    request: SearchRequest | None = None,
    source: str | None = None,
) -> SearchResult:
    """A result from item dicts: signatures stripped, canonical order, content hash."""
    clean = sorted((strip_signatures(i) for i in items), key=sort_key)
    return SearchResult(tuple(clean), items_hash(clean), tuple(notes), request, source)


# ------------------------------------------------------------------------------------------
# search()


def search(
    request: SearchRequest,
    *,
    catalog_url: str | None = None,
    storage_options: dict | None = None,
    signer: Signer | None = None,
    retry: RetryPolicy = RetryPolicy(),
    progress: Progress | None = None,
    registry: Registry | None = None,
) -> SearchResult:
    """Run ``request`` against its catalog; an empty result is not an error (see ``notes``).

    ``catalog_url`` overrides the registry URL: a STAC API root, or (local backend) the path/URL
    of ``catalog.json``, ``*.parquet`` or ``*.ndjson``. ``signer`` (Planetary Computer SAS) is
    only checked here, on a copy of one item, so a broken token service fails early; result hrefs
    stay unsigned. ``progress(n)`` is called as items are scanned. Raises :class:`SearchError`
    for a bad request, a missing catalog, or a server still failing after bounded retries.
    """
    registry = registry or load_registry()
    try:
        catalog = registry.catalog(request.catalog)
    except KeyError as exc:
        raise SearchError(str(exc)) from None
    url = catalog_url or catalog.url
    if url is None:
        url = _default_sample_url()
    backend = _backend_for(url)
    collections, notes = _resolve_collections(request, registry)

    interval = parse_interval(request.datetime)
    watermark = parse_time(request.updated_since) if request.updated_since else None
    if request.bbox is not None and request.intersects is not None:
        raise SearchError("give bbox or intersects, not both")
    bboxes = split_bbox(validate_bbox(request.bbox)) if request.bbox is not None else None
    if request.max_items is not None and request.max_items < 1:
        raise SearchError(f"max_items must be >= 1, got {request.max_items}")
    if request.max_cloud_cover is not None and not 0 <= request.max_cloud_cover <= 100:
        raise SearchError(f"max cloud cover must be within [0, 100], got {request.max_cloud_cover}")
    if bboxes is not None and len(bboxes) == 2:
        notes.append("bbox crosses the antimeridian (west > east): searched both sides of it")

    attrs = attribute_predicates(
        max_cloud_cover=request.max_cloud_cover,
        updated_since=watermark,
        query=request.query,
        cql2_filter=request.filter,
    )
    safe_url = redact_url(url)
    if backend == "api":
        items, more = _search_api(
            url, request, collections, bboxes, interval, watermark, attrs, retry, progress
        )
    else:
        items, more = _search_local(
            url, storage_options, request, collections, bboxes, interval, attrs, retry, progress
        )
    notes.extend(more)

    if request.max_items is not None and len(items) >= request.max_items:
        items = sorted(items, key=lambda i: (-item_sort_time(i).timestamp(), *sort_key(i)))[
            : request.max_items
        ]
        notes.append(
            f"max_items={request.max_items} reached: kept the newest {request.max_items}; more items may match"
        )
    if catalog.signing and signer is None and items:
        notes.append(
            f"asset hrefs of catalog {catalog.name!r} need {catalog.signing} signing before reading: "
            "use sign_for_reading(result.items, signer)"
        )
    result = make_result(items, notes, request, safe_url)
    if signer is not None and result.items:
        _check_signer(signer, result.items[0])
    if not result.items:
        result = SearchResult(
            (), result.content_hash, (*result.notes, _empty_note(request, safe_url)), request, safe_url
        )
    return result


def _default_sample_url() -> str:
    path = Path.cwd() / DEFAULT_SAMPLE_URL
    if not path.exists():
        raise SearchError(
            f"the embedded sample catalog is missing ({path}); build it with `aom samples` "
            "(or give --catalog-url / catalog_url)"
        )
    return str(path)


def _backend_for(url: str) -> str:
    from pipelines.search_local import is_local_source

    if is_local_source(url):
        return "local"
    if url.startswith(("http://", "https://")):
        return "api"
    raise SearchError(
        f"don't know how to search {redact_url(url)}: give a STAC API URL (http/https) or a local "
        "catalog (catalog.json, *.parquet, *.ndjson)"
    )


def _resolve_collections(request: SearchRequest, registry: Registry) -> tuple[tuple[str, ...], list[str]]:
    """Collection ids to search: the given ones, plus each sensor's collections in the catalog."""
    notes: list[str] = []
    out: list[str] = []
    in_catalog = [c for c in registry.collections if c.catalog == request.catalog]
    known_ids = {c.collection for c in in_catalog}
    for name in request.collections:
        if name in known_ids or name not in registry.sensors:
            out.append(name)
            if name not in known_ids:
                notes.append(
                    f"collection {name!r} is not in the registry for catalog {request.catalog!r}; searched as given"
                )
        else:  # a sensor name given as a collection
            out.extend(c.collection for c in in_catalog if c.sensor.name == name)
    for sensor in request.sensors:
        registry.sensor(sensor)
        found = [c.collection for c in in_catalog if c.sensor.name == sensor]
        if not found:
            raise SearchError(f"catalog {request.catalog!r} publishes no collection of sensor {sensor!r}")
        out.extend(found)
    return tuple(dict.fromkeys(out)), notes


def _predicate(
    request: SearchRequest,
    collections: tuple[str, ...],
    bboxes: tuple[tuple[float, float, float, float], ...] | None,
    interval: Any,
    attrs: list[Callable[[Mapping[str, Any]], bool]],
) -> Callable[[Mapping[str, Any]], bool]:
    """The whole request as one in-process test, cheapest checks first."""
    preds: list[Callable[[Mapping[str, Any]], bool]] = []
    if collections:
        preds.append(collection_predicate(collections))
    if interval is not None:
        preds.append(temporal_predicate(interval))
    preds.extend(attrs)
    aoi = aoi_geometry(bboxes, request.intersects)
    if aoi is not None:
        preds.append(spatial_predicate(aoi))
    return all_of(preds)


def _search_local(
    url: str,
    storage_options: Mapping[str, Any] | None,
    request: SearchRequest,
    collections: tuple[str, ...],
    bboxes: tuple[tuple[float, float, float, float], ...] | None,
    interval: Any,
    attrs: list[Callable[[Mapping[str, Any]], bool]],
    retry: RetryPolicy,
    progress: Progress | None,
) -> tuple[list[dict[str, Any]], list[str]]:
    from pipelines.search_local import iter_items

    accept = _predicate(request, collections, bboxes, interval, attrs)

    seen_collections: Counter[str] = Counter()
    found: dict[tuple[str, str], dict[str, Any]] = {}
    scanned = 0
    for item in iter_items(url, storage_options, retry=retry, progress=progress):
        scanned += 1
        seen_collections[str(item.get("collection"))] += 1
        if accept(item):
            found[(str(item.get("collection") or ""), str(item.get("id")))] = item
    notes = [f"local catalog: scanned {scanned} items"]
    missing = [c for c in collections if c not in seen_collections]
    if missing:
        have = ", ".join(sorted(seen_collections)) or "none"
        notes.append(f"collection(s) {', '.join(missing)} not in the local catalog (it has: {have})")
    return list(found.values()), notes


def _search_api(
    url: str,
    request: SearchRequest,
    collections: tuple[str, ...],
    bboxes: tuple[tuple[float, float, float, float], ...] | None,
    interval: Any,
    watermark: Any,
    attrs: list[Callable[[Mapping[str, Any]], bool]],
    retry: RetryPolicy,
    progress: Progress | None,
) -> tuple[list[dict[str, Any]], list[str]]:
    from pipelines.cql2_eval import and_filters
    from pipelines.search_api import ApiQuery, api_search

    query = dict(request.query or {})
    if request.max_cloud_cover is not None:
        cloud = dict(query.get("eo:cloud_cover") or {})
        cloud["lte"] = min(float(cloud.get("lte", 100.0)), float(request.max_cloud_cover))
        query["eo:cloud_cover"] = cloud
    updated_filter = None
    if watermark is not None:
        # Narrow server-side with a superset; the exact test (updated, else created) runs here.
        # t_after, not ">": pgstac answers HTTP 500 to ">" between a non-queryable property and a
        # timestamp literal.
        t = {"timestamp": format_time(watermark)}
        updated_filter = {
            "op": "or",
            "args": [
                {"op": "t_after", "args": [{"property": "updated"}, t]},
                {"op": "t_after", "args": [{"property": "created"}, t]},
            ],
        }
    q = ApiQuery(
        collections=collections,
        bboxes=bboxes or (),
        intersects=request.intersects,
        datetime=interval_to_api(interval) if interval is not None else None,
        query=query or None,
        filter=and_filters(request.filter, updated_filter),
        page_size=min(request.max_items or 100, 100),
    )
    # Every predicate is re-applied to what the server returns, spatial and temporal ones too: the
    # result is then the same as the local backend's even where a server ignores or loosens a
    # parameter (e.g. a catalog matching footprints by bbox only).
    accept = _predicate(request, collections, bboxes, interval, attrs)
    out = api_search(url, q, accept=accept, max_items=request.max_items, retry=retry, progress=progress)
    notes = list(out.notes)
    if not out.items and out.known_collections is not None:
        missing = [c for c in collections if c not in out.known_collections]
        if missing:
            notes.append(f"collection(s) {', '.join(missing)} not served by {redact_url(url)}")
    return out.items, notes


def _empty_note(request: SearchRequest, url: str) -> str:
    parts = [f"collections={','.join(request.collections) or 'any'}"]
    if request.sensors:
        parts.append(f"sensors={','.join(request.sensors)}")
    if request.bbox is not None:
        parts.append("bbox=" + ",".join(f"{v:g}" for v in request.bbox))
    if request.intersects is not None:
        parts.append(f"intersects={request.intersects.get('type')}")
    for name in ("datetime", "max_cloud_cover", "updated_since", "query", "filter"):
        value = getattr(request, name)
        if value is not None:
            parts.append(f"{name}={json.dumps(value) if isinstance(value, dict) else value}")
    return f"no items matched in {url}: " + "; ".join(parts)


# ------------------------------------------------------------------------------------------
# Signing (Planetary Computer SAS tokens and the like): in memory only, never saved

_SIGNING_PARAMS = frozenset(
    {
        "sig",
        "se",
        "st",
        "sp",
        "sv",
        "sr",
        "spr",
        "srt",
        "ss",
        "skoid",
        "sktid",
        "skt",
        "ske",
        "sks",
        "skv",
        "saoid",
        "suoid",
        "scid",
        "signature",
        "expires",
        "key-pair-id",
        "policy",
        "token",
        "x-goog-signature",
    }
)


def unsign_href(href: str) -> str:
    """``href`` without signature/token query parameters (SAS, S3/GCS presigned, CloudFront)."""
    if "?" not in href:
        return href
    parts = urlsplit(href)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [
        (k, v)
        for k, v in query
        if k.lower() not in _SIGNING_PARAMS and not k.lower().startswith(("x-amz-", "x-goog-"))
    ]
    if len(kept) == len(query):
        return href
    return urlunsplit(parts._replace(query=urlencode(kept)))


def is_signed(item: Mapping[str, Any]) -> bool:
    return any(
        isinstance(a, Mapping) and isinstance(a.get("href"), str) and unsign_href(a["href"]) != a["href"]
        for a in (item.get("assets") or {}).values()
    )


def strip_signatures(item: Mapping[str, Any]) -> dict[str, Any]:
    """The item with unsigned asset hrefs (the same dict when nothing was signed)."""
    if not is_signed(item):
        return dict(item) if not isinstance(item, dict) else item
    out = dict(item)
    out["assets"] = {
        k: (
            {**a, "href": unsign_href(a["href"])}
            if isinstance(a, Mapping) and isinstance(a.get("href"), str)
            else a
        )
        for k, a in (item.get("assets") or {}).items()
    }
    return out


def sign_for_reading(items: Iterable[Mapping[str, Any]], signer: Signer) -> tuple[dict[str, Any], ...]:
    """Signed deep copies for reading pixels now; the input items (and anything saved) stay unsigned."""
    return tuple(signer(copy.deepcopy(dict(i))) for i in items)


def planetary_computer_signer() -> Signer:
    """A :data:`Signer` for Planetary Computer asset hrefs (SAS tokens), from the optional
    ``planetary-computer`` package. Use it with :func:`sign_for_reading` only."""
    try:
        import planetary_computer
    except ImportError as exc:
        raise SearchError(
            "signing Planetary Computer asset hrefs needs the planetary-computer package "
            "(pip install planetary-computer)"
        ) from exc

    def sign(item: dict[str, Any]) -> dict[str, Any]:
        signed = planetary_computer.sign(item)
        return dict(signed) if isinstance(signed, Mapping) else dict(signed.to_dict())

    return sign


def _check_signer(signer: Signer, item: Mapping[str, Any]) -> None:
    try:
        signed = signer(copy.deepcopy(dict(item)))
    except Exception as exc:
        raise SearchError(
            f"the signer failed on item {item.get('id')!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(signed, Mapping):
        raise SearchError(f"the signer must return the signed item dict, got {type(signed).__name__}")


# ------------------------------------------------------------------------------------------
# Saving, loading, incremental runs


def _is_parquet(url: str) -> bool:
    from pipelines.search_local import PARQUET_SUFFIXES

    return (
        urlsplit(url).path.lower().endswith(PARQUET_SUFFIXES)
        if "://" in url
        else url.lower().endswith(PARQUET_SUFFIXES)
    )


def sidecar_url(url: str) -> str:
    return url + SIDECAR_SUFFIX


def save_result(result: SearchResult, url: str, storage_options: dict | None = None) -> str:
    """Write the items (ndjson, or stac-geoparquet for ``*.parquet``) and a JSON sidecar
    ``<url>.meta.json`` with the hash, request, count and notes; returns the content hash.

    The items are written first and the sidecar last, so a sidecar always describes complete items.
    Refuses items with signed hrefs (signed URLs expire and are credentials: never persisted).
    """
    url = normalise_url(url)
    signed = [i.get("id") for i in result.items if is_signed(i)]
    if signed:
        raise ValueError(
            f"refusing to save {len(signed)} item(s) with signed asset hrefs (e.g. {signed[0]!r}); "
            "save the unsigned search result, sign copies only for reading"
        )
    digest = items_hash(result.items)
    if digest != result.content_hash:
        raise ValueError(
            f"result hash {result.content_hash} does not match its items ({digest}); was it modified?"
        )
    if _is_parquet(url):
        data = _parquet_bytes(result.items)
        fmt = "stac-geoparquet"
    else:
        lines = [
            json.dumps(i, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            for i in result.items
        ]
        data = ("\n".join(lines) + ("\n" if lines else "")).encode()
        fmt = "ndjson"
    write_bytes_atomic(url, data, storage_options)
    meta = {
        "format": RESULT_FORMAT,
        "items_format": fmt,
        "items": url.rstrip("/").rsplit("/", 1)[-1],
        "content_hash": digest,
        "count": len(result.items),
        "count_by_collection": result.count_by_collection,
        "request": result.request.to_json() if result.request is not None else None,
        "source": redact_url(result.source) if result.source else None,
        "notes": list(result.notes),
    }
    write_json_atomic(sidecar_url(url), meta, storage_options)
    return digest


def _parquet_bytes(items: Iterable[Mapping[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = [dict(i) for i in items]
    buf = io.BytesIO()
    if not rows:
        pq.write_table(
            pa.table({"id": pa.array([], pa.string()), "collection": pa.array([], pa.string())}), buf
        )
        return buf.getvalue()
    import tempfile

    from stac_geoparquet.arrow import parse_stac_items_to_arrow, to_parquet

    # to_parquet wants a path (it str()s whatever it gets); write locally, then upload atomically
    with tempfile.TemporaryDirectory(prefix="aom-search-") as tmp:
        path = Path(tmp) / "items.parquet"
        to_parquet(parse_stac_items_to_arrow(rows), path)
        return path.read_bytes()


def load_result(url: str, storage_options: dict | None = None) -> SearchResult:
    """Read a saved result back; verifies the items still hash to what the sidecar says."""
    from pipelines.search_local import iter_items

    url = normalise_url(url)
    meta: dict[str, Any] = {}
    if exists(sidecar_url(url), storage_options):
        meta = dict(read_json(sidecar_url(url), storage_options))
    if _is_parquet(url) and not _parquet_has_rows(url, storage_options):
        items: list[dict[str, Any]] = []
    else:
        items = list(iter_items(url, storage_options))
    request = SearchRequest.from_json(meta["request"]) if meta.get("request") else None
    result = make_result(items, meta.get("notes") or (), request, meta.get("source"))
    expected = meta.get("content_hash")
    if expected and expected != result.content_hash:
        raise SearchError(
            f"{redact_url(url)} does not match its sidecar: items hash to {result.content_hash}, "
            f"sidecar says {expected} (edited or partly written?)"
        )
    return result


def _parquet_has_rows(url: str, storage_options: Mapping[str, Any] | None) -> bool:
    import pyarrow.parquet as pq

    from pipelines.storage import filesystem

    fs, path = filesystem(url, storage_options)
    with fs.open(path, "rb") as fh:
        return bool(pq.ParquetFile(fh).metadata.num_rows)


def item_key(item: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """(collection, id, updated-or-created): what identifies one version of one item."""
    return (str(item.get("collection") or ""), str(item.get("id")), item_updated(item))


def new_items(result: SearchResult, previous: SearchResult) -> tuple[dict, ...]:
    """Items of ``result`` that ``previous`` did not have, by (id, updated): new or updated ones."""
    before = {item_key(i) for i in previous.items}
    return tuple(i for i in result.items if item_key(i) not in before)

"""Search STAC items: one interface, two backends.

* **STAC API** (Earth Search, Planetary Computer, NASA CMR-STAC, any pgstac/stac-fastapi) through
  pystac-client, with paging, ``max_items``, dict-form ``query``, CQL2-JSON ``filter`` and retries
  with backoff on 429/5xx/timeouts (:mod:`pipelines.search.api`).
* **Local catalog** (static ``catalog.json``, stac-geoparquet or ndjson; local or object storage),
  read and filtered in process (:mod:`pipelines.search.local`). This is the embedded default:
  catalog ``sample`` = ``.aom/samples/items.parquet`` built by ``aom samples``.

The result is the matching items in canonical order with a content hash over their canonical JSON
(:func:`pipelines.search.filters.items_hash`), so a rerun can prove it found the same thing and an
incremental run can ask :func:`new_items` what changed. Asset hrefs in results are never signed:
sign an in-memory copy with :func:`sign_for_reading` right before reading pixels.

Known traps handled here: pystac-client cannot search a static catalog (filtered in process);
``query`` goes out in dict form only (the list form sends numbers as strings); a bbox with west >
east crosses the antimeridian and is searched as two boxes; ``proj:code`` and ``proj:epsg`` are
both read (:func:`item_epsg`).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import InputError, check_number
from pipelines.registry import DEFAULT_CATALOG, Registry, load_registry
from pipelines.retry import RetryPolicy
from pipelines.search.filters import (
    SearchError,
    UnknownCollectionError,
    all_of,
    aoi_geometry,
    attribute_predicates,
    collection_predicate,
    format_time,
    interval_to_api,
    item_epsg,
    item_sort_time,
    items_hash,
    parse_interval,
    parse_time,
    sort_key,
    spatial_predicate,
    split_bbox,
    temporal_predicate,
    validate_bbox,
)
from pipelines.search.signing import Signer, _check_signer, strip_signatures
from pipelines.storage import (
    redact_url,
)

log = logging.getLogger(__name__)

#: Where ``aom samples`` puts the embedded catalog, relative to the current directory.
DEFAULT_SAMPLE_URL = str(Path(".aom") / "samples" / "items.parquet")


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
    catalog: str = DEFAULT_CATALOG  # registry catalog name
    sensors: tuple[str, ...] = ()  # sensor names, resolved to this catalog's collections

    def __post_init__(self) -> None:
        if isinstance(self.collections, str):
            object.__setattr__(self, "collections", tuple(c for c in self.collections.split(",") if c))
        object.__setattr__(self, "collections", tuple(self.collections or ()))
        if isinstance(self.sensors, str):
            object.__setattr__(self, "sensors", tuple(s for s in self.sensors.split(",") if s))
        object.__setattr__(self, "sensors", tuple(self.sensors or ()))
        if self.bbox is not None:
            object.__setattr__(self, "bbox", validate_bbox(self.bbox))
        parse_interval(self.datetime)  # a malformed datetime is refused before any request
        parse_time(self.updated_since)
        try:
            check_number("max_cloud_cover (--max-cloud-cover)", self.max_cloud_cover, minimum=0, maximum=100)
            check_number("max_items (--max-items)", self.max_items, minimum=1)
        except InputError as exc:  # the search area's one error class
            raise SearchError(str(exc)) from None
        if self.filter is not None:
            from pipelines.search.cql2 import compile_filter

            compile_filter(self.filter)  # malformed CQL2 is refused before the catalog is read

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
    content_hash: str  # hash of the canonical item JSON (pipelines.search.filters.items_hash)
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
            "cube runs and embedding sign them in memory; elsewhere use "
            f"sign_for_reading(result.items, catalog_signer({catalog.name!r}))"
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
    from pipelines.search.local import is_local_source

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
    aliases = {a: c.collection for c in in_catalog for a in c.aliases}
    for name in request.collections:
        if name in aliases:  # another spelling of the catalog's id (HLSS30.v2.0 -> HLSS30_2.0)
            notes.append(f"collection {name!r} is spelled {aliases[name]!r} by catalog {request.catalog!r}")
            out.append(aliases[name])
        elif name in known_ids or name not in registry.sensors:
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
    from pipelines.search.local import iter_items

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
        text = (
            f"collection(s) {', '.join(missing)} not in the local catalog {redact_url(url)} (it has: {have})"
        )
        if not found:  # nothing found because of the name: bad input, not an empty result
            raise UnknownCollectionError(text)
        notes.append(text)
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
    from pipelines.search.api import ApiQuery, api_search
    from pipelines.search.cql2 import and_filters

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
        if missing:  # nothing found because of the name: bad input, not an empty result
            served = ", ".join(out.known_collections) or "none"
            raise UnknownCollectionError(
                f"collection(s) {', '.join(missing)} not served by {redact_url(url)} (it serves: {served})"
            )
    return [_api_collection_link(i, url) for i in out.items], notes


def _api_collection_link(item: dict[str, Any], url: str) -> dict[str, Any]:
    """An API item with a ``collection`` field but no ``collection`` link (STAC requires it beside
    the field) gets one to ``<API root>/collections/<id>``, where STAC API - Collections serves the
    collection document; an item that has one is unchanged."""
    from urllib.parse import quote, urlsplit

    from pipelines.search.local import with_collection_link

    cid = item.get("collection")
    if not isinstance(cid, str) or not cid:
        return item
    parts = urlsplit(url)  # the query (an API key, masked when saved) stays; credentials go
    href = parts._replace(path=f"{parts.path.rstrip('/')}/collections/{quote(cid, safe='')}").geturl()
    return with_collection_link(item, {cid: href}, url)


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

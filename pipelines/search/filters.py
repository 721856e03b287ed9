"""The pieces of a search both backends share: validation, in-process predicates, canonical JSON.

The local backend applies every predicate here; the STAC API backend sends what the server
supports and applies the rest here (re-applying the non-spatial ones is harmless and makes the
two backends agree). All semantics follow what a pgstac-backed STAC API does:

* spatial: the item geometry (or its bbox) *intersects* the AOI, touching counts;
* temporal: the item's instant, or its ``start_datetime``/``end_datetime`` range, intersects the
  closed request interval;
* ``max_cloud_cover``: ``eo:cloud_cover <= X``; an item without the property does not match;
* ``updated_since``: ``updated`` (else ``created``) strictly after the watermark.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pipelines.errors import EXIT_FAILED, AOMError
from pipelines.search.cql2 import FilterError, Predicate, compile_filter, query_to_cql2

__all__ = [
    "CatalogUnavailableError",
    "FilterError",
    "SearchError",
    "canonical_item",
    "canonical_json",
    "format_time",
    "item_updated",
    "items_hash",
    "parse_interval",
    "parse_time",
    "split_bbox",
]

#: Link relations that point back into the catalog/API the item came from; they depend on where
#: it was served from, so they are left out of the content hash.
NAVIGATION_RELS = frozenset({"self", "root", "parent", "collection", "next", "prev", "previous", "items"})

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})?$")


class SearchError(AOMError, RuntimeError):
    """A search could not run: a bad request, a catalog that is not one, a request the API refuses
    (exit status 2, bad input). :class:`CatalogUnavailableError` is the one that is not bad input."""


class CatalogUnavailableError(SearchError):
    """The catalog could not be reached or read: the network or the server still failing after the
    retries, or a file that cannot be read. The search started and failed (exit status 1, as every
    run that failed): rerun it later; it is never reported as an empty result."""

    exit_code = EXIT_FAILED


class UnknownCollectionError(SearchError):
    """Nothing was found because the catalog has no collection of that name; names the ones it has."""


# ------------------------------------------------------------------------------------------
# Time


def parse_time(text: str | None, *, end: bool = False) -> dt.datetime | None:
    """RFC 3339 (or a bare date / year-month / year) -> aware UTC datetime; ``..``/empty -> None.

    A partial date at the end of an interval means the end of that day/month/year, as in
    pystac-client (``2023-12-31`` as an end is ``2023-12-31T23:59:59.999999Z``).
    """
    if text is None:
        return None
    s = str(text).strip()
    if s in ("", ".."):
        return None
    try:
        if re.fullmatch(r"\d{4}", s):
            start = dt.datetime(int(s), 1, 1, tzinfo=dt.UTC)
            return start.replace(year=start.year + 1) - dt.timedelta(microseconds=1) if end else start
        if re.fullmatch(r"\d{4}-\d{2}", s):
            y, m = (int(p) for p in s.split("-"))
            start = dt.datetime(y, m, 1, tzinfo=dt.UTC)
            if not end:
                return start
            nxt = dt.datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=dt.UTC)
            return nxt - dt.timedelta(microseconds=1)
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", s):
            start = dt.datetime.fromisoformat(s).replace(tzinfo=dt.UTC)
            return start + dt.timedelta(days=1, microseconds=-1) if end else start
        parsed = dt.datetime.fromisoformat(s.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError as exc:
        raise SearchError(f"not an RFC 3339 date-time: {text!r} ({exc})") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def read_time(value: Any) -> dt.datetime | None:
    """:func:`parse_time` of a value read from a document (an item's ``updated``, a record's
    ``written_at``): None when it is absent or unreadable, instead of a :class:`SearchError`."""
    try:
        return parse_time(str(value)) if value else None
    except SearchError:
        return None


def format_time(value: dt.datetime) -> str:
    """UTC, ``Z``-suffixed, microseconds only when non-zero."""
    value = value.astimezone(dt.UTC)
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if value.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return value.strftime(fmt)


def parse_interval(text: str | None) -> tuple[dt.datetime | None, dt.datetime | None] | None:
    """``A/B`` (either end open with ``..`` or empty) or a single instant/date -> (start, end)."""
    if text is None or not str(text).strip():
        return None
    s = str(text).strip()
    if "/" in s:
        a, b = s.split("/", 1)
        start, stop = parse_time(a), parse_time(b, end=True)
    else:
        start, stop = parse_time(s), parse_time(s, end=True)
    if start is not None and stop is not None and start > stop:
        raise SearchError(f"datetime interval {text!r} ends before it starts")
    return start, stop


def interval_to_api(interval: tuple[dt.datetime | None, dt.datetime | None]) -> str:
    start, stop = interval
    return f"{format_time(start) if start else '..'}/{format_time(stop) if stop else '..'}"


def item_time_range(item: Mapping[str, Any]) -> tuple[dt.datetime | None, dt.datetime | None] | None:
    props = item.get("properties") or {}
    try:
        if props.get("datetime"):
            t = parse_time(props["datetime"])
            return t, t
        if props.get("start_datetime") or props.get("end_datetime"):
            return parse_time(props.get("start_datetime")), parse_time(props.get("end_datetime"))
    except SearchError:
        return None
    return None


def item_sort_time(item: Mapping[str, Any]) -> dt.datetime:
    rng = item_time_range(item)
    low = dt.datetime.min.replace(tzinfo=dt.UTC)
    if rng is None:
        return low
    return rng[0] or rng[1] or low


def sort_key(item: Mapping[str, Any]) -> tuple[str, dt.datetime, str]:
    """The canonical order of results: (collection, datetime, id)."""
    return (str(item.get("collection") or ""), item_sort_time(item), str(item.get("id") or ""))


def item_updated(item: Mapping[str, Any]) -> str | None:
    """The item's ``updated`` (else ``created``) property as stored, or None."""
    props = item.get("properties") or {}
    value = props.get("updated") or props.get("created")
    return str(value) if value else None


#: Item properties that name the processing that made an item's pixels, in a version's order: the
#: STAC processing extension's ``processing:version`` and the Sentinel-2 processing baseline (Earth
#: Search and Planetary Computer items carry ``s2:processing_baseline``, e.g. ``05.11``).
PROCESSING_FIELDS = ("processing:version", "s2:processing_baseline")
_SEP = "|"


def item_version(item: Mapping[str, Any]) -> str | None:
    """An item's version (the one definition: saved results' :func:`pipelines.search.new_items`, cube
    and embedding freshness, ``pipelines.cubes.freshness``): its ``updated`` (else ``created``),
    followed by the processing versions it carries (``|field=value`` for each of
    :data:`PROCESSING_FIELDS`), e.g.
    ``"2025-07-31T15:00:24.817Z|s2:processing_baseline=05.11"``; only the time (as before processing
    versions were kept) for an item without any, None for one with neither."""
    props = item.get("properties") or {}
    tags = [f"{k}={props[k]}" for k in PROCESSING_FIELDS if props.get(k) not in (None, "")]
    updated = item_updated(item)
    return _SEP.join([updated or "", *tags]) if tags else updated


def version_parts(version: Any) -> tuple[str | None, dict[str, str]]:
    """``(time, {processing field: value})`` of an :func:`item_version` (or of a plain time, as every
    record written before processing versions were kept holds)."""
    if not version:
        return None, {}
    when, *tags = str(version).split(_SEP)
    return when or None, dict(t.partition("=")[::2] for t in tags)


# ------------------------------------------------------------------------------------------
# Space


def validate_bbox(bbox: Iterable[float]) -> tuple[float, float, float, float]:
    values = tuple(float(v) for v in bbox)
    if len(values) != 4:
        raise SearchError(f"bbox needs 4 numbers (west, south, east, north), got {len(values)}")
    w, s, e, n = values
    if not all(math.isfinite(v) for v in values):
        raise SearchError(f"bbox has a non-finite number: {values}")
    if not (-180 <= w <= 180 and -180 <= e <= 180):
        raise SearchError(f"bbox longitudes must be within [-180, 180], got west={w}, east={e}")
    if not (-90 <= s <= 90 and -90 <= n <= 90):
        raise SearchError(f"bbox latitudes must be within [-90, 90], got south={s}, north={n}")
    if s > n:
        raise SearchError(f"bbox south ({s}) is north of north ({n})")
    return w, s, e, n


def split_bbox(bbox: tuple[float, float, float, float]) -> tuple[tuple[float, float, float, float], ...]:
    """A bbox with west > east crosses the antimeridian: two boxes, one each side of it."""
    w, s, e, n = bbox
    if w <= e:
        return (bbox,)
    return ((w, s, 180.0, n), (-180.0, s, e, n))


def aoi_geometry(
    bboxes: Iterable[tuple[float, float, float, float]] | None, intersects: Mapping[str, Any] | None
) -> Any:
    """The AOI as a (prepared) shapely geometry, or None for no spatial constraint."""
    import shapely
    from shapely.geometry import box, shape

    geom: Any = None
    if intersects is not None:
        try:
            geom = shape(dict(intersects))
        except Exception as exc:
            raise SearchError(f"intersects is not a valid GeoJSON geometry: {exc}") from exc
        if not geom.is_valid:
            geom = geom.buffer(0)
    elif bboxes:
        parts = [box(*b) for b in bboxes]
        geom = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
    if geom is not None:
        shapely.prepare(geom)
    return geom


def item_geometry(item: Mapping[str, Any]) -> Any:
    from shapely.geometry import box, shape

    g = item.get("geometry")
    if g:
        try:
            return shape(g)
        except Exception:
            pass
    b = item.get("bbox")
    if b and len(b) in (4, 6):
        w, s, e, n = (b[0], b[1], b[2], b[3]) if len(b) == 4 else (b[0], b[1], b[3], b[4])
        if w > e:  # a bbox across the antimeridian
            import shapely

            return shapely.MultiPolygon([box(w, s, 180, n), box(-180, s, e, n)])
        return box(w, s, e, n)
    return None


def item_epsg(item: Mapping[str, Any], asset: str | None = None) -> int | None:
    """The item's (or one asset's) EPSG code from ``proj:code`` (``"EPSG:32631"``) or ``proj:epsg``."""
    sources: list[Mapping[str, Any]] = []
    if asset is not None:
        sources.append((item.get("assets") or {}).get(asset) or {})
    sources.append(item.get("properties") or {})
    if asset is None:
        sources.extend(a for a in (item.get("assets") or {}).values() if isinstance(a, Mapping))
    for src in sources:
        code = src.get("proj:code")
        if isinstance(code, str) and code.upper().startswith("EPSG:"):
            try:
                return int(code.split(":", 1)[1])
            except ValueError:
                pass
        epsg = src.get("proj:epsg")
        if isinstance(epsg, int | float) and not isinstance(epsg, bool) and epsg > 0:
            return int(epsg)
        if isinstance(epsg, str) and epsg.isdigit():
            return int(epsg)
    return None


# ------------------------------------------------------------------------------------------
# Predicates


def cloud_predicate(max_cloud: float) -> Predicate:
    def ok(item: Mapping[str, Any]) -> bool:
        value = (item.get("properties") or {}).get("eo:cloud_cover")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
            return False
        return float(value) <= max_cloud

    return ok


def updated_predicate(watermark: dt.datetime) -> Predicate:
    def ok(item: Mapping[str, Any]) -> bool:
        value = item_updated(item)
        if value is None:
            return False
        try:
            t = parse_time(value)
        except SearchError:
            return False
        return t is not None and t > watermark

    return ok


def temporal_predicate(interval: tuple[dt.datetime | None, dt.datetime | None]) -> Predicate:
    start, stop = interval

    def ok(item: Mapping[str, Any]) -> bool:
        rng = item_time_range(item)
        if rng is None:
            return False
        lo, hi = rng
        if stop is not None and lo is not None and lo > stop:
            return False
        return not (start is not None and hi is not None and hi < start)

    return ok


def spatial_predicate(aoi: Any) -> Predicate:
    def ok(item: Mapping[str, Any]) -> bool:
        g = item_geometry(item)
        return g is not None and bool(aoi.intersects(g))

    return ok


def collection_predicate(collections: Iterable[str]) -> Predicate:
    wanted = frozenset(collections)
    return lambda item: item.get("collection") in wanted


def attribute_predicates(
    *,
    max_cloud_cover: float | None,
    updated_since: dt.datetime | None,
    query: Mapping[str, Any] | None,
    cql2_filter: Mapping[str, Any] | None,
) -> list[Predicate]:
    """The non-spatiotemporal predicates, cheapest first."""
    preds: list[Predicate] = []
    if max_cloud_cover is not None:
        preds.append(cloud_predicate(max_cloud_cover))
    if updated_since is not None:
        preds.append(updated_predicate(updated_since))
    if query:
        preds.append(compile_filter(query_to_cql2(query)))
    if cql2_filter:
        preds.append(compile_filter(cql2_filter))
    return preds


def all_of(preds: list[Predicate]) -> Callable[[Mapping[str, Any]], bool]:
    return lambda item: all(p(item) for p in preds)


# ------------------------------------------------------------------------------------------
# Canonical JSON and the content hash


def _canon(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _canon(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_canon(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, str) and _RFC3339.match(value):
        try:
            t = parse_time(value)
        except SearchError:
            return value
        return format_time(t) if t else value
    return value


def canonical_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """The item as hashed: null fields dropped, integral floats as ints, date-times as UTC ``Z``,
    navigation links (self/root/parent/collection...) left out.

    These are exactly the differences a round trip through stac-geoparquet or a different server
    introduces, so the same items hash the same whether saved as ndjson or geoparquet.
    """
    out = _canon(item)
    links = [link for link in out.get("links") or [] if link.get("rel") not in NAVIGATION_RELS]
    out["links"] = sorted(links, key=lambda link: json.dumps(link, sort_keys=True))
    return dict(out)


def canonical_json(item: Mapping[str, Any]) -> str:
    return json.dumps(
        canonical_item(item), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def items_hash(items: Iterable[Mapping[str, Any]]) -> str:
    """``sha256:<hex>`` over the canonical JSON of the items in canonical order."""
    h = hashlib.sha256()
    for item in sorted(items, key=sort_key):
        h.update(canonical_json(item).encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()

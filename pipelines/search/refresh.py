"""Incremental refresh: what is new in a catalog since the last successful run.

The watermark is a small JSON object in object storage (any fsspec URL). It is read before the
search and written only after the downstream work succeeded (:func:`commit_watermark`), so a
failed run is simply redone by the next one: items are found again, tiles already complete are
skipped by the exactly-once cube writer, nothing is lost and nothing is done twice.

What a refresh reads and keeps is bounded by what is recent, not by the size of the request:

* **dated items** (``updated``, else ``created``): one ``updated_since`` search from ``lookback``
  before the watermark (the newest such time ingested). The watermark records the
  (``collection/id``, ``updated``) it ingested inside that window (``recent``), so an item
  published late with a time up to ``lookback`` older than the watermark (a writer's clock behind,
  an upload after processing) is found once, and nothing is planned twice.
* **undated items** (neither, e.g. every Planetary Computer Sentinel-2 item): an ``updated`` search
  never returns them, so a second search reads the items *acquired* (``datetime``) from
  ``undated_lookback`` before the last run; the ones not in the watermark's ``undated`` record are
  new. That record keeps only ids still inside the window. An undated item published more than
  ``undated_lookback`` after its acquisition is not found (a full cube run over the area is).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pipelines.search.filters import (
    SearchError,
    format_time,
    interval_to_api,
    item_time_range,
    item_updated,
    items_hash,
    parse_interval,
    parse_time,
    read_time,
    sort_key,
)
from pipelines.search.request import SearchRequest, SearchResult, search
from pipelines.storage import exists, read_json, write_json_atomic
from pipelines.tiling import TileGrid

WATERMARK_FORMAT = 2
_READABLE_FORMATS = (1, 2)  # 1: before the lookback windows (no recent/undated/checked)

#: How far before the watermark the ``updated`` search starts: an item stamped up to this much
#: older than the newest one already ingested is still found (once).
DEFAULT_LOOKBACK = dt.timedelta(days=2)
#: How far before the last run the acquisition-time search for undated items starts: catalogs
#: publish within days of acquisition; an undated item published later than this is not found.
DEFAULT_UNDATED_LOOKBACK = dt.timedelta(days=30)

_YEAR_ONE = dt.datetime.min.replace(tzinfo=dt.UTC)
_OPEN = ".."  # acquisition end of an item with an open-ended range: always inside the window


@dataclass(frozen=True)
class Watermark:
    """The refresh state after a committed run.

    ``updated``: the newest ``updated`` (else ``created``) time ingested (None while only items
    without either were). ``recent``: (``collection/id``, ``updated``) of the items ingested with a
    time from ``lookback`` before ``updated``. ``checked``: when the committed run searched.
    ``undated``: (``collection/id``, acquisition end) of the undated items ingested that were
    acquired from ``undated_lookback`` before ``checked``. ``recent``/``undated``/``checked`` are
    None in a watermark written before they existed (format 1).
    """

    updated: str | None  # RFC 3339
    ids_at_updated: tuple[str, ...] = ()  # ids of the items at ``updated`` (kept for format 1)
    runs: int = 0
    checked: str | None = None
    recent: tuple[tuple[str, str], ...] | None = None
    undated: tuple[tuple[str, str], ...] | None = None
    recent_since: str | None = None  # ``recent`` is complete from here (the run's search start)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": WATERMARK_FORMAT,
            "updated": self.updated,
            "ids_at_updated": list(self.ids_at_updated),
            "runs": self.runs,
            "checked": self.checked,
            "recent": None if self.recent is None else dict(self.recent),
            "undated": None if self.undated is None else dict(self.undated),
            "recent_since": self.recent_since,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Watermark:
        if data.get("format") not in _READABLE_FORMATS or "updated" not in data:
            raise ValueError(f"not an AOM watermark (format {WATERMARK_FORMAT}): {sorted(data)}")
        updated = data["updated"]
        if updated is not None and _parse(str(updated)) == _YEAR_ONE:
            # Written by an older version after a run of only undated items (every later run then
            # crashed): no dated item was ingested.
            updated = None

        def pairs(key: str) -> tuple[tuple[str, str], ...] | None:
            value = data.get(key)
            return None if value is None else tuple(sorted((str(k), str(v)) for k, v in dict(value).items()))

        return cls(
            None if updated is None else str(updated),
            tuple(str(i) for i in data.get("ids_at_updated") or ()),
            int(data.get("runs", 0)),
            None if data.get("checked") is None else str(data["checked"]),
            pairs("recent"),
            pairs("undated"),
            None if data.get("recent_since") is None else str(data["recent_since"]),
        )


@dataclass(frozen=True)
class RefreshPlan:
    """New items since the watermark, the tiles they touch, and the watermark to commit after."""

    new_items: tuple[dict, ...]
    tile_ids: tuple[str, ...]
    previous: Watermark | None
    next_watermark: Watermark | None
    search_hash: str
    notes: tuple[str, ...]

    @property
    def is_empty(self) -> bool:
        return not self.new_items


def read_watermark(url: str, storage_options: Mapping[str, Any] | None = None) -> Watermark | None:
    if not exists(url, storage_options):
        return None
    return Watermark.from_json(read_json(url, storage_options))


def commit_watermark(url: str, plan: RefreshPlan, storage_options: Mapping[str, Any] | None = None) -> None:
    """Record ``plan`` as done. Call only after everything downstream of it succeeded."""
    if plan.next_watermark is not None:
        write_json_atomic(url, plan.next_watermark.to_json(), storage_options)


def _updated(item: Mapping[str, Any]) -> dt.datetime | None:
    """When the item was last published (``updated``, else ``created``); None without a readable one
    (an ``updated_since`` search never returns such an item)."""
    return read_time(item_updated(item))


def _key(item: Mapping[str, Any]) -> str:
    return f"{item.get('collection') or ''}/{item.get('id')}"


def _acquired_end(item: Mapping[str, Any]) -> dt.datetime | None:
    """The end of the item's acquisition time (``datetime``, else ``end_datetime``); None when open."""
    rng = item_time_range(item)
    return None if rng is None else rng[1]


def plan_refresh(
    request: SearchRequest,
    watermark_url: str,
    *,
    grid: TileGrid,
    catalog_url: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    watermark_storage_options: Mapping[str, Any] | None = None,
    lookback: dt.timedelta = DEFAULT_LOOKBACK,
    undated_lookback: dt.timedelta = DEFAULT_UNDATED_LOOKBACK,
    now: dt.datetime | None = None,
) -> RefreshPlan:
    """Search for items new since the stored watermark and map them to grid tiles.

    Dated items are searched by ``updated`` from ``lookback`` before the watermark, undated ones by
    acquisition ``datetime`` from ``undated_lookback`` before the last run (``now`` for a test's
    clock); the first run (no watermark) reads the whole request.
    """
    if request.max_items is not None:
        raise SearchError(
            f"refresh needs every new item: max_items={request.max_items} would move the watermark "
            "past items the search did not return; leave it out"
        )
    if lookback < dt.timedelta(0) or undated_lookback <= dt.timedelta(0):
        raise SearchError(
            f"refresh windows must be positive: lookback={lookback}, undated={undated_lookback}"
        )
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    previous = read_watermark(watermark_url, watermark_storage_options)
    opts = dict(storage_options or {}) or None
    request = replace(request, updated_since=None)
    notes: list[str] = []

    def run(req: SearchRequest) -> SearchResult:
        result = search(req, catalog_url=catalog_url, storage_options=opts)
        notes.extend(result.notes)
        return result

    mark = _parse(previous.updated) if previous is not None and previous.updated is not None else None
    checked = _parse(previous.checked) if previous is not None and previous.checked is not None else None
    dated: list[dict] = []  # dated items the searches returned (all, not only the new ones)
    undated: list[dict] = []
    new: list[dict] = []
    since: dt.datetime | None = None
    if previous is None:  # first run: everything the request matches is new
        everything = run(request).items
        dated = [i for i in everything if _updated(i) is not None]
        undated = [i for i in everything if _updated(i) is None]
        new = list(everything)
    else:
        # --- dated items: updated >= watermark - lookback, less the versions already recorded
        if previous.recent is not None and mark is not None:
            since = mark - lookback
            if previous.recent_since is not None:  # what ``recent`` covers, no earlier
                since = max(since, _parse(previous.recent_since))
            recorded = dict(previous.recent)
        elif previous.recent is not None:  # no dated item ingested yet: anchor on the last search
            since = (checked or now) - lookback
            recorded = {}
        elif mark is not None:  # format 1: inclusive at its instant less the ids seen there
            since, recorded = mark, {}
            notes.append("watermark from an older version: no lookback before its instant this once")
        else:  # format 1 written for undated items only (year 1): no dated item was ingested
            since, recorded = None, {}
            notes.append("watermark from an older version at year 1: every dated item of the request is read")
        dated_req = request if since is None else replace(request, updated_since=_before(since))
        dated = [i for i in run(dated_req).items if _updated(i) is not None]
        legacy_at_mark = set(previous.ids_at_updated) if previous.recent is None else set()
        for item in dated:
            key, when = _key(item), _updated(item)
            if recorded.get(key) == item_updated(item):
                continue  # this version was ingested
            if when == mark and str(item.get("id")) in legacy_at_mark:
                continue
            new.append(item)
        # --- undated items: acquired >= last run - undated_lookback, less the ids recorded
        start = (checked or now) - undated_lookback
        if previous.undated is None:
            notes.append(
                "watermark from an older version: undated items acquired since "
                f"{format_time(start)} are planned (tiles that already hold them are skipped)"
            )
        window = _window_from(request.datetime, start)
        if window is not None:
            found = run(replace(request, datetime=window)).items
            undated = [i for i in found if _updated(i) is None]
            known = dict(previous.undated or ())
            new.extend(i for i in undated if _key(i) not in known)

    new.sort(key=sort_key)
    next_wm = _next_watermark(previous, dated, undated, now, lookback, undated_lookback, since)
    digest = items_hash(sorted([*dated, *undated], key=sort_key))
    if not new:
        since_text = previous.updated if previous and previous.updated else "the last run"
        notes.append(f"no new items since {since_text}: nothing to do")
        # the state still moves on (the undated window follows the clock, old ids are pruned)
        return RefreshPlan((), (), previous, next_wm, digest, tuple(notes))
    tiles = grid.tiles_for_items(new)
    return RefreshPlan(
        new_items=tuple(new),
        tile_ids=tuple(sorted({t.tile_id for t in tiles})),
        previous=previous,
        next_watermark=next_wm,
        search_hash=digest,
        notes=tuple(notes),
    )


def _next_watermark(
    previous: Watermark | None,
    dated: Iterable[Mapping[str, Any]],
    undated: Iterable[Mapping[str, Any]],
    now: dt.datetime,
    lookback: dt.timedelta,
    undated_lookback: dt.timedelta,
    since: dt.datetime | None,
) -> Watermark:
    """The state once this plan is ingested: every item the searches returned is then ingested
    (earlier runs ingested the ones not new), so the windows are rebuilt from them alone."""
    dated = list(dated)
    mark = _parse(previous.updated) if previous is not None and previous.updated is not None else None
    times = [t for i in dated if (t := _updated(i)) is not None]
    newest = max([*times, *([mark] if mark is not None else [])], default=None)  # never moves back
    recent: tuple[tuple[str, str], ...] = ()
    at_newest: tuple[str, ...] = ()
    horizon: dt.datetime | None = None
    if newest is not None:
        # the dated search read from ``since``: ``recent`` knows nothing older than that
        horizon = newest - lookback if since is None else max(newest - lookback, since)
        recent = tuple(
            sorted({(_key(i), str(item_updated(i))) for i, t in zip(dated, times) if t >= horizon})
        )
        at_newest = tuple(sorted({str(i.get("id")) for i, t in zip(dated, times) if t == newest}))
        if mark == newest and previous is not None and previous.recent is None:
            at_newest = tuple(sorted(set(at_newest) | set(previous.ids_at_updated)))
    before = _parse(previous.checked) if previous is not None and previous.checked is not None else None
    checked = max(now, before) if before is not None else now
    start = checked - undated_lookback
    kept: dict[str, str] = {}
    for item in undated:
        end = _acquired_end(item)
        if end is None or end >= start:  # prune what the next undated search no longer reads
            kept[_key(item)] = _OPEN if end is None else format_time(end)
    return Watermark(
        updated=None if newest is None else format_time(newest),
        ids_at_updated=at_newest,
        runs=(previous.runs if previous else 0) + 1,
        checked=format_time(checked),
        recent=recent,
        undated=tuple(sorted(kept.items())),
        recent_since=None if horizon is None else format_time(horizon),
    )


def _before(t: dt.datetime) -> str:
    """An ``updated_since`` (strictly after) that includes ``t`` itself."""
    return format_time(t - dt.timedelta(microseconds=1))


def _window_from(datetime_text: str | None, start: dt.datetime) -> str | None:
    """The request's datetime interval from ``start`` on; None when it ends before ``start``."""
    lo, hi = parse_interval(datetime_text) or (None, None)
    lo = start if lo is None else max(lo, start)
    if hi is not None and hi < lo:
        return None
    return interval_to_api((lo, hi))


def _parse(text: str) -> dt.datetime:
    parsed = parse_time(text)
    if parsed is None:
        raise ValueError(f"watermark time {text!r} is not RFC 3339")
    return parsed


def should_retrain(new_item_count: int, *, min_new_items: int, items_since_training: int = 0) -> bool:
    """Threshold for a fine-tuning run: enough new data accumulated since the last training."""
    return min_new_items > 0 and (items_since_training + new_item_count) >= min_new_items


def summarise_tiles(tile_ids: Sequence[str]) -> str:
    return ", ".join(tile_ids[:10]) + (f" (+{len(tile_ids) - 10} more)" if len(tile_ids) > 10 else "")

"""Incremental refresh: what is new in a catalog since the last successful run.

The watermark is a small JSON object in object storage (any fsspec URL). It is read before the
search and written only after the downstream work succeeded (:func:`commit_watermark`), so a
failed run is simply redone by the next one: items are found again, tiles already complete are
skipped by the exactly-once cube writer, nothing is lost and nothing is done twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pipelines.search.filters import item_updated, parse_time
from pipelines.search.request import SearchRequest, SearchResult, search
from pipelines.storage import exists, read_json, write_json_atomic
from pipelines.tiling import TileGrid

WATERMARK_FORMAT = 1


@dataclass(frozen=True)
class Watermark:
    """The newest ``updated`` (else ``created``) time already ingested, and the ids seen at it."""

    updated: str  # RFC 3339
    ids_at_updated: tuple[str, ...] = ()
    runs: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": WATERMARK_FORMAT,
            "updated": self.updated,
            "ids_at_updated": list(self.ids_at_updated),
            "runs": self.runs,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Watermark:
        if data.get("format") != WATERMARK_FORMAT or "updated" not in data:
            raise ValueError(f"not an AOM watermark (format {WATERMARK_FORMAT}): {sorted(data)}")
        return cls(str(data["updated"]), tuple(data.get("ids_at_updated", ())), int(data.get("runs", 0)))


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


def _updated(item: Mapping[str, Any]) -> dt.datetime:
    """When the item was last published (``updated``, else ``created``)."""
    return parse_time(item_updated(item)) or dt.datetime.min.replace(tzinfo=dt.UTC)


def plan_refresh(
    request: SearchRequest,
    watermark_url: str,
    *,
    grid: TileGrid,
    catalog_url: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    watermark_storage_options: Mapping[str, Any] | None = None,
) -> RefreshPlan:
    """Search for items updated after the stored watermark and map them to grid tiles."""
    previous = read_watermark(watermark_url, watermark_storage_options)
    if previous is not None:
        # Inclusive search at the watermark instant, then drop the ids already seen there: items
        # published in the same second as the last run's newest one are neither lost nor redone.
        since = (_parse(previous.updated) - dt.timedelta(microseconds=1)).isoformat()
        request = replace(request, updated_since=since)
    result: SearchResult = search(
        request, catalog_url=catalog_url, storage_options=dict(storage_options or {}) or None
    )
    seen = set(previous.ids_at_updated) if previous else set()
    new = tuple(
        i
        for i in result.items
        if not (previous and _updated(i) == _parse(previous.updated) and i.get("id") in seen)
    )
    notes = list(result.notes)
    if not new:
        since_text = previous.updated if previous else "the beginning"
        notes.append(f"no new items since {since_text}: nothing to do")
        return RefreshPlan((), (), previous, previous, result.content_hash, tuple(notes))
    tiles = grid.tiles_for_items(new)
    newest = max(_updated(i) for i in new)
    at_newest = tuple(sorted(str(i.get("id")) for i in new if _updated(i) == newest))
    if previous is not None and _parse(previous.updated) == newest:
        at_newest = tuple(sorted(set(at_newest) | seen))
    next_wm = Watermark(newest.isoformat(), at_newest, (previous.runs if previous else 0) + 1)
    return RefreshPlan(
        new_items=new,
        tile_ids=tuple(sorted({t.tile_id for t in tiles})),
        previous=previous,
        next_watermark=next_wm,
        search_hash=result.content_hash,
        notes=tuple(notes),
    )


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

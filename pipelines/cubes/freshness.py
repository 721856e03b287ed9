"""Which tiles a cube run must rebuild because it was given items their completion record has not seen.

A tile is written once and then skipped by every later run (its completion record is what makes it
done). New acquisitions of an already built tile (a ``refresh`` of a live catalog, a rerun with a
longer item list) would then never reach the store. So a run compares the items it has for each
recorded tile with the items the tile was built from:

* **new items** (ids the record has not seen): the tile is rebuilt from the run's items, under its
  lease, built aside and swapped in only once complete (:mod:`pipelines.cubes.rebuild`: a rebuild
  whose reads fail keeps the tile; the swap removes the record first, so the tile is absent, never
  half old and half new, to readers that check records);
* but only when the run also has **every item the record holds**: a run given only the new items
  (``aom cubes --items new.ndjson``) would otherwise rebuild the tile from fewer acquisitions than it
  has; such a tile is skipped and the summary says how many items are missing.

"Seen" is the record's ``considered_items`` (every item a build was given, recorded since this
module exists). Records written before it list only the items that gave pixels (``items``) and the
assets left out (``skipped``); for them an item also counts as seen when it was last updated (STAC
``updated``, else ``created``) before the record was written, so an item that touched the tile then
without giving a pixel does not trigger a rebuild.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.search import SearchError, item_updated, parse_time


@dataclass(frozen=True)
class Freshness:
    """How a recorded tile stands against the items of a run."""

    new: tuple[str, ...]
    """Ids of the run's items the record has not seen (sorted)."""
    missing: tuple[str, ...]
    """Ids of items the record holds that the run was not given (sorted)."""

    @property
    def rebuild(self) -> bool:
        """New items, and the run has every item the tile holds."""
        return bool(self.new) and not self.missing

    def reason(self) -> str:
        """Why the tile is skipped (empty when it is rebuilt)."""
        if not self.new:
            return "already complete (record exists)"
        if self.missing:
            return (
                f"not rebuilt: {len(self.new)} new item(s), but the tile holds {len(self.missing)} item(s) "
                f"this run was not given (e.g. {self.missing[0]}); rerun with all of the tile's items"
            )
        return ""


def _time(value: str | None) -> dt.datetime | None:
    """An RFC 3339 time as search reads it; None when absent or unreadable (then not "seen")."""
    try:
        return parse_time(value)
    except SearchError:
        return None


def freshness(record: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> Freshness:
    """The :class:`Freshness` of a tile whose completion record is ``record`` against ``items`` (the
    run's items touching the tile)."""
    held = {str(i) for i in record.get("items") or ()}
    if "considered_items" in record:
        seen = {str(i) for i in record["considered_items"]} | held
    else:  # a record written before considered_items: also seen = published before the record
        seen = held | {str(s.get("item")) for s in record.get("skipped") or () if s.get("item")}
        written = _time(record.get("written_at"))
        for item in items:
            stamp = _time(item_updated(item))
            if written is not None and stamp is not None and stamp <= written:
                seen.add(str(item.get("id")))
    given = {str(i.get("id")) for i in items}
    return Freshness(new=tuple(sorted(given - seen)), missing=tuple(sorted(held - given)))

"""Which tiles a cube run must rebuild: it was given items their completion record has not seen, or
newer versions of items it has.

A tile is written once and then skipped by every later run (its completion record is what makes it
done). New acquisitions of an already built tile (a ``refresh`` of a live catalog, a rerun with a
longer item list) would then never reach the store. So a run compares the items it has for each
recorded tile with the items the tile was built from:

* **new items** (ids the record has not seen): the tile is rebuilt from the run's items, under its
  lease, built aside and swapped in only once complete (:mod:`pipelines.cubes.rebuild`: a rebuild
  whose reads fail keeps the tile; the swap removes the record first, so the tile is absent, never
  half old and half new, to readers that check records);
* **updated items** (ids the record has seen, whose version, STAC ``updated`` else ``created`` and
  the processing versions it carries, is now newer than the one the tile was built from: a
  catalog's reprocessing keeps an item's id): the tile is rebuilt the same way, or its old pixels
  would stay forever;
* but only when the run also has **every item the record holds**: a run given only the new items
  (``aom cubes --items new.ndjson``) would otherwise rebuild the tile from fewer acquisitions than it
  has; such a tile is skipped and the summary says how many items are missing.

"Seen" is the record's ``considered_items`` (every item a build was given, recorded since this
module exists). Records written before it list only the items that gave pixels (``items``) and the
assets left out (``skipped``); for them an item also counts as seen when it was last updated (STAC
``updated``, else ``created``) before the record was written, so an item that touched the tile then
without giving a pixel does not trigger a rebuild.

An item's version as the build saw it is the record's ``item_versions`` (id ->
:func:`pipelines.search.item_version` of the run's items, the one definition of an item's version,
also that of saved results' ``new_items``: ``updated``, else ``created``, else None; recorded since
versions are compared).
A catalog can also reprocess an item without moving ``updated`` (a new Sentinel-2 processing
baseline, a new ``processing:version``), so the version also carries the item's processing versions
when it has them (:data:`pipelines.search.filters.PROCESSING_FIELDS`):
``"2025-07-31T15:00:24.817Z|s2:processing_baseline=05.11"``.
An item is **updated** when its time now is later than the recorded one, or when a processing
version it carries now differs from the one recorded for it (unless its time shows an older copy).
An item without a recorded time (a record written before ``item_versions``, or an item that had
neither time then) counts as seen at the record's ``written_at``; an item without a recorded
processing version (every record written before they were kept, or an item that had none then) is
compared by its time alone. So upgrading rebuilds only tiles whose items changed after they were
built, and a catalog that starts to publish a processing field rebuilds nothing. A version that
cannot be read, or an item that has none now, never triggers a rebuild.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.search import item_updated, item_version, read_time, version_parts

__all__ = ["Freshness", "freshness", "item_version", "item_versions", "newer_versions", "version_parts"]


@dataclass(frozen=True)
class Freshness:
    """How a recorded tile stands against the items of a run."""

    new: tuple[str, ...]
    """Ids of the run's items the record has not seen (sorted)."""
    missing: tuple[str, ...]
    """Ids of items the record holds that the run was not given (sorted)."""
    updated: tuple[str, ...] = ()
    """Ids of the run's items the record has seen, now in a newer version (sorted)."""

    @property
    def rebuild(self) -> bool:
        """New or updated items, and the run has every item the tile holds."""
        return bool(self.new or self.updated) and not self.missing

    def changes(self) -> str:
        """``"N new item(s)"``, ``"N updated item(s)"`` or ``"N new and M updated item(s)"``."""
        if self.new and self.updated:
            return f"{len(self.new)} new and {len(self.updated)} updated item(s)"
        return f"{len(self.new)} new item(s)" if self.new else f"{len(self.updated)} updated item(s)"

    def reason(self) -> str:
        """Why the tile is skipped (empty when it is rebuilt)."""
        if not (self.new or self.updated):
            return "already complete (record exists)"
        if self.missing:
            return (
                f"not rebuilt: {self.changes()}, but the tile holds {len(self.missing)} item(s) "
                f"this run was not given (e.g. {self.missing[0]}); rerun with all of the tile's items"
            )
        return ""


def item_versions(items: Sequence[Mapping[str, Any]]) -> dict[str, str | None]:
    """A record's ``item_versions``: id -> :func:`pipelines.search.item_version` of the items a build
    is given; an id given twice keeps its newest readable version."""
    out: dict[str, str | None] = {}
    for item in items:
        iid, version = str(item.get("id")), item_version(item)
        stamp, kept = read_time(version_parts(version)[0]), read_time(version_parts(out.get(iid))[0])
        if iid not in out or (stamp is not None and (kept is None or stamp > kept)):
            out[iid] = version
    return out


def newer_versions(now: Mapping[str, str | None], recorded: Mapping[str, Any], written_at: Any) -> set[str]:
    """Ids of ``now`` (id -> :func:`pipelines.search.item_version` as given now) in a newer version
    than the one a record holds for them in ``recorded`` (its ``item_versions``): a later time than
    the recorded one, or, where it holds none, than the record's ``written_at`` (records written
    before versions were kept: their items count as seen then); or a processing version
    (:data:`pipelines.search.filters.PROCESSING_FIELDS`) other than the recorded one, where both have
    it, unless the time now is earlier than the recorded one (an older copy of the item). A time
    that cannot be read, now or recorded, never counts as newer; an item without a recorded
    processing version is compared by its time alone. Also the rule of ``pipelines.embed.freshness``
    for tiles embedded from STAC items."""
    written = read_time(written_at)
    out = set()
    for iid, version in now.items():
        when, tags = version_parts(version)
        was_when, was_tags = version_parts(recorded.get(iid))
        stamp, recorded_time = read_time(when), read_time(was_when)
        was = recorded_time if was_when else written
        if stamp is not None and was is not None and stamp > was:
            out.add(iid)
        elif any(k in was_tags and was_tags[k] != v for k, v in tags.items()) and not (
            stamp is not None and recorded_time is not None and stamp < recorded_time
        ):
            out.add(iid)  # reprocessed without a new ``updated`` (an older copy is not newer)
    return out


def _updated(
    record: Mapping[str, Any], seen: set[str], items: Sequence[Mapping[str, Any]]
) -> tuple[str, ...]:
    """Ids of ``items`` in ``seen`` whose version is newer than the one ``record`` holds for them
    (without one: its ``written_at``)."""
    now = {i: v for i, v in item_versions(items).items() if i in seen}
    return tuple(sorted(newer_versions(now, record.get("item_versions") or {}, record.get("written_at"))))


def freshness(record: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> Freshness:
    """The :class:`Freshness` of a tile whose completion record is ``record`` against ``items`` (the
    run's items touching the tile)."""
    held = {str(i) for i in record.get("items") or ()}
    if "considered_items" in record:
        seen = {str(i) for i in record["considered_items"]} | held
    else:  # a record written before considered_items: also seen = published before the record
        seen = held | {str(s.get("item")) for s in record.get("skipped") or () if s.get("item")}
        written = read_time(record.get("written_at"))
        for item in items:
            stamp = read_time(item_updated(item))
            if written is not None and stamp is not None and stamp <= written:
                seen.add(str(item.get("id")))
    given = {str(i.get("id")) for i in items}
    return Freshness(
        new=tuple(sorted(given - seen)),
        missing=tuple(sorted(held - given)),
        updated=_updated(record, seen, items),
    )

"""Embedded tiles whose inputs gained acquisitions since they were embedded: the next run re-embeds them.

A tile's embedding at a period is done once its completion record exists, and later runs skip it.
When a cube tile is rebuilt with new items (:mod:`pipelines.cubes.freshness`, e.g. after a
``refresh``), the records of the tiles embedded from it describe a composite the store no longer
holds: the tile's own, and those of its neighbours whose margins were read from it (chips overlap
tile edges, so a tile's embeddings depend on the cubes around it). So for the recorded tiles of a
run from a cube store whose own cube record, or a margin neighbour's, is at least as new as their
embedding record (the modification times of listings: a rerun where nothing changed reads no
record), the embedding record's ``provenance`` is compared with the current cube records:

* ``cube_written_at`` and ``margin_cubes`` (the cube records the embedding was made from, recorded
  since this module exists) equal to the current records' ``written_at`` (the complete neighbours
  within the margin): fresh;
* otherwise stale when these records hold items in the period (of the run's collections; for a
  neighbour, of the tile's own groups) that the embedding's ``input_items`` lack (a rebuilt cube),
  when its own cube record holds an item in a newer version (``item_versions``: the catalog's
  ``updated`` and the item's processing versions, ``pipelines.search.item_version``) than
  the one the embedding was made from (its ``item_versions``, the cube record's versions of the
  tile's items then; for an item it does not list, as in records made before the field, an
  ``updated`` later than its ``cube_written_at``): a reprocessed item, same id, new pixels; or when
  a neighbour rebuilt since holds such an item among those composited into the margin, newer than
  the version the margin was read in (the provenance's ``item_versions`` updated by its
  ``margin_item_versions`` for that neighbour; for embeddings made before that field, an ``updated``
  later than the neighbour's ``margin_cubes`` time: :func:`_margin_reprocessed`); or when
  a neighbour with such items was built since (the margin was NaN there; records made before
  ``margin_cubes`` cannot tell). The tile is embedded again and its shard and record
  replaced (the record last, as for any write: readers see the old or the new tile, never a mix).

From STAC items (``--catalog-url``) the run's search is the only signal: each record lists
``considered_items`` (the items of the period its tile was given, whether or not they entered the
composite) and their ``item_versions`` (id -> ``updated``, else ``created``, and the processing
versions, as the search gave them), and a recorded tile whose search now gives it items it was not
given, or a newer version of one (a reprocessed item keeps its id), is embedded again (:func:`find_stale_catalog`; records made before
``considered_items`` compare with ``input_items``, items without a recorded version, as in
records made before ``item_versions``, count as seen at the record's ``written`` time, and items
without a recorded processing version are compared by their time alone: the rule of the cube
records, ``pipelines.cubes.freshness.newer_versions``, so upgrading re-embeds only tiles
whose items changed after they were embedded). The records are read (one GET each, concurrently)
only where the store's considered-items index (``_tiles/<version>/_considered.json``: per tile and
time index, the record's modification time and a digest of the items, ids and versions, of a search
it was found fresh against) has no entry with the record's listed time, or one whose digest differs
from that of the items the search gives now; a rerun over a catalog that did not change reads one
object instead of one per tile. The check writes the index back when it learnt entries (the last
concurrent writer wins: an entry counts only while its record keeps that time).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines import embeddings as es
from pipelines.embed.sources import CubeSource, Period
from pipelines.runs import TileStatus
from pipelines.storage import MAX_PREFIX_LISTINGS, redact_url
from pipelines.tiling import column_prefixes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CubeState:
    """The cube records a tile's embedding at a period would be read from now."""

    written_at: str | None
    """``written_at`` of the tile's own cube record."""
    items: frozenset[str]
    """Ids of the items its record holds in the period (groups of the source's collections)."""
    margin: Mapping[str, tuple[str, frozenset[str]]]
    """Complete cube records of its margin neighbours: tile id -> (``written_at``, ids of the items
    they hold in the period in the tile's own groups: those a read composites into the margin)."""
    versions: Mapping[str, str | None] = field(default_factory=dict)
    """The own record's ``item_versions`` of ``items`` (``pipelines.search.item_version``)."""
    margin_versions: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)
    """Per neighbour of ``margin``: its record's ``item_versions`` of the items ``margin`` lists."""


def cube_state(
    source: CubeSource,
    tile_id: str,
    margin_m: float,
    cube_records: Mapping[str, Mapping[str, Any]],
    period: Period,
) -> CubeState:
    """A tile's :class:`CubeState` from ``cube_records`` (its own and its neighbours' within
    ``margin_m``: the layout's ``pad_m``), as :meth:`CubeSource.read_block` would read them."""
    own = cube_records[tile_id]
    groups = source.groups_of(own)
    margin = {
        n: (str(rec.get("written_at") or ""), frozenset(source.period_items(rec, period, groups)))
        for n in source.neighbours(tile_id, margin_m)
        if (rec := cube_records.get(n)) is not None and rec.get("status") == TileStatus.COMPLETE
    }
    margin_versions = {
        n: {i: (cube_records[n].get("item_versions") or {}).get(i) for i in ids}
        for n, (_, ids) in margin.items()
    }
    items = frozenset(source.period_items(own, period))
    versions = own.get("item_versions") or {}
    return CubeState(
        own.get("written_at"), items, margin, {i: versions.get(i) for i in items}, margin_versions
    )


def _reprocessed(versions: Mapping[str, str | None], prov: Mapping[str, Any]) -> bool:
    """Whether one of the items is in a newer version than the one the embedding was made from (a
    reprocessed item keeps its id: the cube was rebuilt with its new pixels,
    ``pipelines.cubes.freshness``): newer than the provenance's ``item_versions`` (the cube record's
    versions of its items then, recorded since processing versions are compared), and where it
    holds none, published after the cube it was made from was written (``cube_written_at``)."""
    from pipelines.cubes.freshness import newer_versions

    return bool(newer_versions(versions, prov.get("item_versions") or {}, prov.get("cube_written_at")))


def _margin_reprocessed(prov: Mapping[str, Any], state: CubeState) -> bool:
    """Whether a margin neighbour was rebuilt since the embedding was made (its ``written_at`` is
    not the provenance's ``margin_cubes`` one) and holds one of its margin items in a newer version
    than the one the embedding read from it: a reprocessed item (same id) composited into the
    margin. The versions read are the provenance's ``item_versions`` (the own record's) updated by
    its ``margin_item_versions`` for that neighbour (where they differed); embeddings made before
    ``margin_item_versions`` compare the items' time alone with the neighbour's ``written_at`` then
    (``pipelines.cubes.freshness.newer_versions``), so upgrading re-embeds only tiles whose
    neighbour was rebuilt with items updated after the margin was read."""
    from pipelines.cubes.freshness import newer_versions

    made_from = prov.get("margin_cubes") or {}
    recorded_margin = prov.get("margin_item_versions")
    own = prov.get("item_versions") or {}
    for n, (written_at, _) in state.margin.items():
        if n not in made_from or made_from[n] == written_at:
            continue
        recorded = {} if recorded_margin is None else {**own, **(recorded_margin.get(n) or {})}
        if newer_versions(state.margin_versions.get(n) or {}, recorded, made_from[n]):
            return True
    return False


def is_stale(embedding_record: Mapping[str, Any], state: CubeState) -> bool:
    """Whether an embedded tile must be embedded again (module docstring)."""
    prov = embedding_record.get("provenance") or {}
    made_from: Mapping[str, str] | None = prov.get("margin_cubes")
    if (
        "cube_written_at" in prov
        and prov["cube_written_at"] == state.written_at
        and (made_from or {}) == {n: w for n, (w, _) in state.margin.items()}
    ):
        return False
    seen = set(prov.get("input_items") or ())
    if state.items - seen or any(ids - seen for _, ids in state.margin.values()):
        return True  # a cube (its own or a neighbour's) rebuilt with new items
    if state.written_at != prov.get("cube_written_at") and _reprocessed(state.versions, prov):
        return True  # its own cube rebuilt with a reprocessed item (same id, newer pixels)
    if _margin_reprocessed(prov, state):
        return True  # a neighbour rebuilt with a reprocessed item: the margin's pixels changed
    # a neighbour built since: its items may be known (the same scenes), but the margin was NaN there
    return made_from is not None and any(ids for n, (_, ids) in state.margin.items() if n not in made_from)


def stale_tiles(
    out: str,
    version: str,
    out_options: Mapping[str, Any],
    source: CubeSource,
    cube_records: Mapping[str, Mapping[str, Any]],
    done: Mapping[int, set[str]],
    periods: Sequence[Period],
    margin_m: float,
) -> dict[int, set[str]]:
    """Of the recorded ``done`` tiles (time index -> tile ids), those to embed again; ``cube_records``:
    those of the tiles and of their neighbours within ``margin_m`` (the layout's ``pad_m``)."""
    keys = [(t, ti) for ti, ids in done.items() for t in ids if t in cube_records]
    records = es.read_tile_records(out, version, keys, out_options)
    stale: dict[int, set[str]] = {}
    for (tile_id, ti), rec in records.items():
        if is_stale(rec, cube_state(source, tile_id, margin_m, cube_records, periods[ti])):
            stale.setdefault(ti, set()).add(tile_id)
    return stale


def find_stale(
    source: CubeSource,
    out: str,
    version: str,
    out_options: Mapping[str, Any],
    plan_tiles: Collection[str],
    cube_times: Mapping[str, float],
    times: Mapping[int, Mapping[str, float]],
    periods: Sequence[Period],
    margin_m: float,
) -> tuple[dict[int, set[str]], int]:
    """``(stale tiles per time index, tiles whose records were read)`` among the recorded tiles
    ``times`` (time index -> tile id -> embedding record modification time) of a plan over
    ``plan_tiles``. Only the tiles whose own or a margin neighbour's cube record is at least as new
    as their embedding record are read; ``cube_times``: every cube record time the plan's listings of
    ``plan_tiles``' columns found (``CubeStore.record_times(..., whole_columns=True)``); neighbours
    in other columns (the columns along the plan's edges) are listed here."""
    if not any(times.values()):
        return {}, 0
    recorded: set[str] = set().union(*(found.keys() for found in times.values()))
    rings = {t: source.neighbours(t, margin_m) for t in recorded}
    listed = tuple(column_prefixes(plan_tiles, limit=MAX_PREFIX_LISTINGS))  # as CubeStore.record_times
    outside = {n for ring in rings.values() for n in ring if not n.startswith(listed)}
    store = source.store() if outside else None  # opened once (a HEAD), only when there is I/O to do
    if store is not None:
        cube_times = {**cube_times, **store.record_times(among=outside)}
    newer = {
        ti: {t for t, m in found.items() if max(cube_times.get(n, -1.0) for n in [t, *rings[t]]) >= m}
        for ti, found in times.items()
    }
    candidates: set[str] = set().union(*newer.values())
    if not candidates:
        return {}, 0
    wanted = candidates | {n for t in candidates for n in rings[t] if n in cube_times}
    cubes = (store or source.store()).records(sorted(wanted))
    return stale_tiles(out, version, out_options, source, cubes, newer, periods, margin_m), len(candidates)


def is_stale_catalog(embedding_record: Mapping[str, Any], items: Mapping[str, str | None]) -> bool:
    """Whether a tile embedded from STAC items must be embedded again: the run's search gives it
    ``items`` (id -> version, the items dated in the period, :meth:`CatalogSource.period_versions`)
    that it was not given then (``considered_items``; records made before that field: not in
    ``input_items``), or newer versions of items it was given (a reprocessed item keeps its id):
    later than the record's ``item_versions``, or, for records made before that field, than its
    ``written`` time, or with another processing version than the recorded one
    (``pipelines.cubes.freshness.newer_versions``, the cube records' rule)."""
    from pipelines.cubes.freshness import newer_versions

    prov = embedding_record.get("provenance") or {}
    seen = prov.get("considered_items")
    if set(items) - set(prov.get("input_items") or () if seen is None else seen):
        return True
    return bool(newer_versions(items, prov.get("item_versions") or {}, embedding_record.get("written")))


def considered_digest(items: Mapping[str, str | None]) -> str:
    """Digest of a search's items for a tile, ids and versions (the considered-items index compares
    these, not the items)."""
    lines = sorted(f"{i}\t{v or ''}" for i, v in items.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:20]


def find_stale_catalog(
    out: str,
    version: str,
    out_options: Mapping[str, Any],
    found: Mapping[int, Mapping[str, Mapping[str, str | None]]],
    times: Mapping[int, Mapping[str, float]] | None = None,
) -> tuple[dict[int, set[str]], int]:
    """Of the recorded tiles ``found`` (time index -> tile id -> the items, id -> version, the run's
    search gives it in that period), those to embed again, and how many records were read. ``times``
    (the records' listed modification times, :func:`pipelines.embeddings.record_times`) enables the
    considered-items index: a tile whose entry has its record's time and the digest of ``found``'s
    items (the search a read found that record fresh against) is fresh without a read; without
    ``times`` every record is read."""
    index = es.read_considered_index(out, version, out_options) if times is not None else {}
    listed_times = times or {}
    learnt = dict(index)
    to_read: list[tuple[str, int]] = []
    for ti, tiles in found.items():
        listed = listed_times.get(ti, {})
        for tile_id, items in tiles.items():
            entry = index.get(f"{ti}/{tile_id}")
            if entry is None or tile_id not in listed or entry != (listed[tile_id], considered_digest(items)):
                to_read.append((tile_id, ti))
    records = es.read_tile_records(out, version, to_read, out_options) if to_read else {}
    stale: dict[int, set[str]] = {}
    for (tile_id, ti), rec in records.items():
        key = f"{ti}/{tile_id}"
        if is_stale_catalog(rec, found[ti][tile_id]):
            stale.setdefault(ti, set()).add(tile_id)
            learnt.pop(key, None)  # embedded again: its record changes
            continue
        mtime = listed_times.get(ti, {}).get(tile_id)
        if mtime is not None:  # the answer is the record's and the search's alone: the same next time
            learnt[key] = (mtime, considered_digest(found[ti][tile_id]))
    if times is not None and learnt != index:
        try:  # a cache: the check's answer stands without it, and the next check reads again
            es.write_considered_index(out, version, learnt, out_options)
        except Exception as exc:
            log.warning(
                "considered-items index not written: %s", redact_url(f"{type(exc).__name__}: {exc}")[:400]
            )
    return stale, len(records)

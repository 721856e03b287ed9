"""Embedded tiles whose cube gained acquisitions since they were embedded: the next run re-embeds them.

A tile's embedding at a period is done once its completion record exists, and later runs skip it.
When its cube tile is rebuilt with new items (:mod:`pipelines.cubes.freshness`, e.g. after a
``refresh``), that record describes a composite the store no longer holds. So for the recorded
tiles of a run from a cube store whose cube record is newer than their embedding record (the
modification times the planning listings already carry: a rerun where nothing changed reads no
record), the embedding record's ``provenance`` is compared with the tile's current cube record:

* ``cube_written_at`` (the cube record the embedding was made from, recorded since this module
  exists) equal to the cube record's ``written_at``: fresh;
* otherwise stale when the cube record has items in the period (of the run's collections) that the
  embedding's ``input_items`` lack. The tile is embedded again and its shard and record replaced
  (the record last, as for any write: readers see the old or the new tile, never a mix).

Only the tile's own cube is compared: a tile whose neighbour alone was rebuilt keeps the margin
context it had (the rebuilt neighbour itself is re-embedded). Catalog sources have no cube records:
their tiles are not re-checked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipelines import embeddings as es
from pipelines.embed.sources import CubeSource, Period


def is_stale(embedding_record: Mapping[str, Any], cube_record: Mapping[str, Any], items: set[str]) -> bool:
    """Whether an embedded tile must be embedded again (module docstring); ``items``: the ids
    ``cube_record`` holds in the embedding's period (:meth:`CubeSource.period_items`)."""
    prov = embedding_record.get("provenance") or {}
    if "cube_written_at" in prov and prov["cube_written_at"] == cube_record.get("written_at"):
        return False
    return bool(items - set(prov.get("input_items") or ()))


def stale_tiles(
    out: str,
    version: str,
    out_options: Mapping[str, Any],
    source: CubeSource,
    cube_records: Mapping[str, Mapping[str, Any]],
    done: Mapping[int, set[str]],
    periods: Sequence[Period],
) -> dict[int, set[str]]:
    """Of the recorded ``done`` tiles (time index -> tile ids), those to embed again."""
    keys = [(t, ti) for ti, ids in done.items() for t in ids if t in cube_records]
    records = es.read_tile_records(out, version, keys, out_options)
    stale: dict[int, set[str]] = {}
    for (tile_id, ti), rec in records.items():
        cube = cube_records[tile_id]
        if is_stale(rec, cube, source.period_items(cube, periods[ti])):
            stale.setdefault(ti, set()).add(tile_id)
    return stale

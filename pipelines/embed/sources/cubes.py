"""Padded tiles from a cube store (``pipelines.cubes``): margins from the neighbouring tiles' cubes,
neighbouring tiles read together (:meth:`CubeSource.read_block`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.embed.chips import GroupPixels
from pipelines.embed.sources.padded import (
    PaddedTile,
    any_finite,
    band_infos_of,
    composite_into,
    composite_raw_into,
    items_of,
    time_indices,
)
from pipelines.embed.sources.periods import Period
from pipelines.registry import BandSpec
from pipelines.runs import TileStatus
from pipelines.storage import public_uri, redact_url
from pipelines.tiling import Tile, TileGrid, parse_tile_id, square_groups, tile_cell

if TYPE_CHECKING:
    from pipelines.cubes import CubeStore

BLOCK_SIDE_MAX = 4
"""Largest square of tiles :meth:`CubeSource.read_block` composites at once (bounds its memory: 4 x 4
tiles of 7680 m with a 2.4 km margin are 3552 px a side at 10 m)."""


# ------------------------------------------------------------------------------------------
# Cube stores


@dataclass(frozen=True)
class CubeSource:
    """Padded tiles from a cube store written by ``pipelines.cubes`` (any fsspec URL)."""

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    collections: tuple[str, ...] = ()
    bands: tuple[str, ...] = ()
    grid: TileGrid = field(default_factory=TileGrid)
    strip_mb: float = 64.0
    decode: str = "shards"
    """``shards``: read shards directly, each decoded once (:func:`composite_raw_into`); ``xarray``:
    the reference path through xarray's mask-and-scale per strip (:func:`composite_into`), same output."""

    def describe(self) -> str:
        return f"cubes:{public_uri(self.url)}"  # an absolute URI, credentials redacted

    def store(self) -> CubeStore:
        from pipelines.cubes import CubeStore

        return CubeStore.open(self.url, self.storage_options)

    def records(self, tile_ids: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Completion records of the store's recorded tiles, any status: 'empty' tiles become nodata
        tiles (optionally only ``tile_ids``)."""
        store = self.store()
        ids = store.recorded_tiles()
        if tile_ids is not None:
            wanted = set(tile_ids)
            ids = [t for t in ids if t in wanted]
        return {t: store.record(t) for t in ids}

    @staticmethod
    def open_group(store: CubeStore, tile_id: str, collection: str, label: str) -> Any:
        """A group as a lazily indexed Dataset *without* dask (a slice reads only its chunks, at once)."""
        return store.open_group(tile_id, collection, label, lazy=True)

    def groups_of(self, record: Mapping[str, Any]) -> list[tuple[str, str]]:
        """``(collection, gsd label)`` of a cube record's groups that this source reads (its
        collections; all when it names none), in the record's order."""
        out = []
        for g in record.get("groups") or []:
            coll = str(g["collection"])
            if self.collections and coll not in self.collections:
                continue
            out.append((coll, str(g["gsd_label"])))
        return out

    def neighbours(self, tile_id: str, margin_m: float) -> list[str]:
        """Ids of the grid tiles that a margin of ``margin_m`` around a tile reaches (the tile itself
        excluded), in the order a read visits them: the cubes a padded tile's margin comes from."""
        step = math.ceil(margin_m / self.grid.tile_size_m) if margin_m > 0 else 0
        epsg, ix, iy = parse_tile_id(tile_id)
        return [
            f"{epsg}_{ix + dx}_{iy + dy}"
            for dx in range(-step, step + 1)
            for dy in range(-step, step + 1)
            if dx or dy
        ]

    def period_items(
        self, record: Mapping[str, Any], period: Period, groups: Sequence[tuple[str, str]] | None = None
    ) -> set[str]:
        """Ids of the items a tile's cube record holds in ``period`` (groups of this source's
        collections, or only those of ``groups``): what a padded tile read from that record lists in
        its ``input_items`` (a margin neighbour's record with the groups of the tile itself)."""
        out: set[str] = set()
        for coll, label in self.groups_of(record):
            if groups is not None and (coll, label) not in groups:
                continue
            group = _RecordGroup.of(record, coll, label)
            out |= items_of(group, time_indices(group, period))
        return out

    def margin_versions(
        self, own: Mapping[str, Any], neighbours: Mapping[str, Mapping[str, Any]], period: Period
    ) -> dict[str, dict[str, str | None]]:
        """Neighbour tile id -> id -> version (the neighbour record's ``item_versions``) of the items
        each of ``neighbours`` (their cube records) holds in ``period`` in the groups of ``own`` (the
        tile's cube record): those composited into the tile's margin. Only where the version differs
        from the one ``own`` gives the item in the period, or ``own`` lacks it (the usual neighbour,
        sharing the tile's scenes in the same versions, adds nothing): ``pipelines.embed.freshness``."""
        groups = self.groups_of(own)
        mine = own.get("item_versions") or {}
        in_own = self.period_items(own, period)
        out: dict[str, dict[str, str | None]] = {}
        for nid, rec in sorted(neighbours.items()):
            theirs = rec.get("item_versions") or {}
            diff = {
                i: theirs.get(i)
                for i in sorted(self.period_items(rec, period, groups))
                if i not in in_own or theirs.get(i) != mine.get(i)
            }
            if diff:
                out[nid] = diff
        return out

    def band_infos(self, records: Mapping[str, Mapping[str, Any]]) -> list[BandSpec]:
        """Bands that the request would use (one group dataset opened per (collection, GSD))."""
        store = self.store()
        seen: dict[tuple[str, str], str] = {}
        for tid, rec in records.items():
            for key in self.groups_of(rec):
                seen.setdefault(key, tid)
        infos: list[BandSpec] = []
        for (coll, label), tid in sorted(seen.items()):
            ds = self.open_group(store, tid, coll, label)
            _, bands = band_infos_of(ds, coll, self.bands)
            infos.extend(bands)
        return infos

    def read(self, tile: Tile, period: Period, time_index: int, margin_m: float) -> PaddedTile:
        """One padded tile (``read_block`` of that tile alone)."""
        return self.read_block([tile], period, time_index, margin_m)[0]

    def read_block(
        self, tiles: Sequence[Tile], period: Period, time_index: int, margin_m: float
    ) -> list[PaddedTile]:
        """Padded tiles of ``tiles``, each equal to reading it alone, with shared margins read once.

        The tiles of one UTM zone are read as one rectangle when it is compact (at most
        :data:`BLOCK_SIDE_MAX` tiles a side and at most twice as many tiles as asked for), else in the
        squares of :func:`~pipelines.tiling.square_groups` (side ``ceil(sqrt(n))``, at most
        :data:`BLOCK_SIDE_MAX`). Per rectangle the union of the padded windows (its bounding box plus
        ``margin_m``) is read and composited once and every tile's window sliced from it. Neighbouring
        tiles overlap by their margins, so k x k tiles decode ``((k T + 2 m) / k T)^2`` of the ground
        they keep instead of ``((T + 2 m) / T)^2`` (seam blending pads a 7680 m tile by 2.4 km: 1.46
        for 3 x 3 tiles instead of 2.64). Memory: one float32 array per (collection, GSD) over the
        rectangle's padded box.
        """
        order = {t.tile_id: i for i, t in enumerate(tiles)}
        out: list[PaddedTile | None] = [None] * len(tiles)
        for rect in _rectangles(tiles):
            for p in self._read_square(rect, period, time_index, margin_m):
                out[order[p.tile.tile_id]] = p
        return [p for p in out if p is not None]

    def _read_square(
        self, tiles: Sequence[Tile], period: Period, time_index: int, margin_m: float
    ) -> list[PaddedTile]:
        import time

        t0 = time.perf_counter()
        store = self.store()
        outs = [PaddedTile(t, time_index, margin_m) for t in tiles]
        records: dict[str, Mapping[str, Any] | None] = {}

        def record(tile_id: str) -> Mapping[str, Any] | None:
            """A tile's completion record; None only when it has none (no cube there). Any other
            failure to read it (access denied, storage down, a corrupt record) raises: the tile
            fails and is read again by the next run, never embedded with NaN where a cube exists."""
            if tile_id not in records:
                records[tile_id] = _record_or_none(store, tile_id)
            return records[tile_id]

        live: list[PaddedTile] = []
        for out in outs:
            center = record(out.tile.tile_id)
            out.cube_written_at = None if center is None else center.get("written_at")
            if center is None:
                out.status, out.reason = TileStatus.SKIPPED, "no complete cube for this tile"
            elif center.get("status") != TileStatus.COMPLETE:
                out.status, out.reason = (
                    TileStatus.EMPTY,
                    f"cube is {center.get('status')}: {center.get('reason') or 'no data'}",
                )
            else:
                live.append(out)
        if not live:
            return outs
        keys: list[tuple[str, str]] = []
        for out in live:
            for key in self.groups_of(record(out.tile.tile_id) or {}):
                if key not in keys:
                    keys.append(key)
        if len(live) > 1 and any(
            len({_record_bands(record(o.tile.tile_id) or {}, key) for o in live} - {None}) > 1 for key in keys
        ):  # tiles whose records list other bands for a group: each read on its own
            return [p for t in tiles for p in self._read_square([t], period, time_index, margin_m)]

        # every tile's ring of neighbours (itself first), in the order a tile alone reads them
        rings: dict[str, list[str]] = {}
        grid_tiles: dict[str, Tile] = {}
        for out in live:
            ring, absent = [out.tile.tile_id], []
            grid_tiles[out.tile.tile_id] = out.tile
            for nid in self.neighbours(out.tile.tile_id, margin_m):
                rec = record(nid)
                if rec is None:
                    absent.append(nid)
                elif rec.get("status") == TileStatus.COMPLETE:
                    ring.append(nid)
                    grid_tiles.setdefault(nid, self.grid.tile(nid))
                    out.margin_cubes[nid] = str(rec.get("written_at") or "")
            if absent:
                out.notes.append(
                    f"margin: no cube for {len(absent)} neighbour tile(s) ({', '.join(absent)}): NaN there"
                )
            rings[out.tile.tile_id] = ring
        contributors = list(dict.fromkeys(n for out in live for n in rings[out.tile.tile_id]))
        box = (
            min(o.bounds[0] for o in live),
            min(o.bounds[1] for o in live),
            max(o.bounds[2] for o in live),
            max(o.bounds[3] for o in live),
        )
        left, bottom, right, top = box
        items: dict[str, set[str]] = {o.tile.tile_id: set() for o in live}
        for coll, label in keys:
            ref = next(o for o in live if (coll, label) in self.groups_of(record(o.tile.tile_id) or {}))
            ref_id = ref.tile.tile_id
            ref_rec = record(ref_id) or {}
            rg_c: Any = None
            if self.decode == "xarray":
                ds_c: Any = self.open_group(store, ref_id, coll, label)
            else:  # band metadata from the record and the group's zarr.json + coordinate chunks
                rg_c = store.open_raw(ref_id, coll, label)
                ds_c = _RecordGroup.with_bands(ref_rec, coll, label, rg_c)
                if ds_c is None:  # coordinates in a layout read only through zarr
                    ds_c = self.open_group(store, ref_id, coll, label)
            gsd = float(ds_c.attrs["gsd_m"])
            _, infos = band_infos_of(ds_c, coll, self.bands)
            if not infos:
                continue
            # every pixel is written once: by a contributor's composite, else NaN (filled below)
            arr = np.empty((len(infos), round((top - bottom) / gsd), round((right - left) / gsd)), np.float32)
            names = [b.name for b in infos]
            used: dict[str, tuple[set[str], int]] = {}  # contributor -> (its items, acquisitions)
            lacking: set[str] = set()
            for nid in contributors:
                nrec = record(nid) or {}
                if (coll, label) not in self.groups_of(nrec):
                    continue
                ntile = grid_tiles[nid]
                if nid == ref_id:
                    ds: Any = ds_c
                elif self.decode == "xarray":
                    ds = self.open_group(store, nid, coll, label)
                else:  # bands, times and items from the tile's completion record (no open)
                    ds = _RecordGroup.of(nrec, coll, label)
                nb_names = [str(b) for b in ds["band"].values]
                if not all(n in nb_names for n in names):
                    lacking.add(nid)
                    continue
                nidx = [nb_names.index(n) for n in names]
                tsel = time_indices(ds, period)
                if not tsel:
                    continue
                nl, nb, nr, nt = ntile.bounds
                inter = (max(left, nl), max(bottom, nb), min(right, nr), min(top, nt))
                if inter[2] <= inter[0] or inter[3] <= inter[1]:
                    continue
                src = _pixel_window(inter, nl, nt, gsd)  # in the contributor's pixels
                r0, _, c0, _ = _pixel_window(inter, left, top, gsd)
                dst = (r0, c0)  # in the box's pixels
                if self.decode == "xarray":
                    composite_into(arr, ds, nidx, tsel, src, dst, self.strip_mb)
                else:
                    rg = rg_c if nid == ref_id else store.open_raw(nid, coll, label)
                    composite_raw_into(arr, rg, nidx, tsel, src, dst, self.strip_mb)
                used[nid] = (items_of(ds, tsel), len(tsel))
            _fill_uncovered(arr, box, gsd, self.grid.tile_size_m, {grid_tiles[n].index for n in used})
            for out in live:
                tid = out.tile.tile_id
                if (coll, label) not in self.groups_of(record(tid) or {}):
                    continue
                ol, ob, orr, ot = out.bounds
                for nid in rings[tid]:
                    if nid in lacking:
                        out.notes.append(f"margin: {nid} {coll}/{label} lacks some bands")
                    nl, nb, nr, nt = grid_tiles[nid].bounds
                    if nid in used and max(ol, nl) < min(orr, nr) and max(ob, nb) < min(ot, nt):
                        items[tid] |= used[nid][0]
                r0, c0 = round((top - ot) / gsd), round((ol - left) / gsd)
                h, w = round((ot - ob) / gsd), round((orr - ol) / gsd)
                pixels = arr[:, r0 : r0 + h, c0 : c0 + w]  # a view: the tiles of a block share its array
                out.groups.append(GroupPixels(coll, gsd, infos, pixels))
                out.observations[f"{coll}/{label}"] = used[tid][1] if tid in used else 0
        _check_unchanged(store, {n: record(n) for n in contributors})
        per_tile_s = (time.perf_counter() - t0) / len(live)
        for out in live:
            out.groups.sort(key=lambda g: (g.gsd_m, g.collection))
            out.input_items = tuple(sorted(items[out.tile.tile_id]))
            own = record(out.tile.tile_id) or {}
            versions = own.get("item_versions") or {}  # what a reprocessed item is told by (freshness.py)
            out.item_versions = {i: versions.get(i) for i in sorted(self.period_items(own, period))}
            out.margin_item_versions = self.margin_versions(
                own, {n: record(n) or {} for n in out.margin_cubes}, period
            )
            if not any(any_finite(g.pixels) for g in out.groups):
                out.status = TileStatus.EMPTY
                out.reason = "no valid pixel in the period (cloud, shadow, nodata or no acquisition)"
            out.read_s = per_tile_s
        return outs


def _record_or_none(store: CubeStore, tile_id: str) -> dict[str, Any] | None:
    """The completion record of a tile, None when the store has no record of it (``CubeStore.record``
    raises CubeStoreError for exactly that: the object does not exist). Every other error propagates."""
    from pipelines.cubes import CubeStoreError

    try:
        return store.record(tile_id)
    except CubeStoreError:
        return None


def _check_unchanged(store: CubeStore, before: Mapping[str, Mapping[str, Any] | None]) -> None:
    """Raise CubeStoreError when a cube tile read from changed meanwhile: a rebuild
    (:mod:`pipelines.cubes.freshness`) removes a tile's record before it rewrites the tile's shards
    and writes a new one last, so records unchanged after the pixels were read prove that no shard
    read was rewritten (else the tile could hold a mix of old and new shards). The tile is read again
    by the next run."""
    from pipelines.cubes import CubeStoreError

    after = store.records(sorted(before))
    changed = sorted(
        t
        for t, rec in before.items()
        if rec is not None and (after.get(t) or {}).get("written_at") != rec.get("written_at")
    )
    if changed:
        raise CubeStoreError(
            f"cube tile(s) {', '.join(changed)} of {redact_url(store.url)} changed while read (a cube run "
            "rebuilt them): read again by the next run"
        )


def _rectangles(tiles: Sequence[Tile]) -> list[list[Tile]]:
    """``tiles`` split into compact rectangles of the grid (see :meth:`CubeSource.read_block`)."""
    zones: dict[int, list[Tile]] = {}
    for t in tiles:
        zones.setdefault(t.epsg, []).append(t)
    out: list[list[Tile]] = []
    for zone in zones.values():
        ix = [t.index[0] for t in zone]
        iy = [t.index[1] for t in zone]
        w, h = max(ix) - min(ix) + 1, max(iy) - min(iy) + 1
        if max(w, h) <= BLOCK_SIDE_MAX and w * h <= 2 * len(zone):
            out.append(zone)
        else:
            side = min(BLOCK_SIDE_MAX, math.ceil(math.sqrt(len(zone))))
            out.extend(square_groups(zone, tile_cell, side))
    return out


def _pixel_window(
    bounds: tuple[float, float, float, float], origin_left: float, origin_top: float, gsd: float
) -> tuple[int, int, int, int]:
    """``(row0, row1, col0, col1)`` of ``bounds`` in a north-up pixel grid of ``gsd`` whose top-left
    corner is ``(origin_left, origin_top)``."""
    left, bottom, right, top = bounds
    return (
        round((origin_top - top) / gsd),
        round((origin_top - bottom) / gsd),
        round((left - origin_left) / gsd),
        round((right - origin_left) / gsd),
    )


def _fill_uncovered(
    arr: np.ndarray,
    box: tuple[float, float, float, float],
    gsd: float,
    tile_m: float,
    written: set[tuple[int, int]],
) -> None:
    """NaN over the parts of ``arr`` (pixels of ``box``) that no grid cell of ``written`` (``(ix, iy)``
    of the tiles whose composite was written there) covers: cells without a cube, incomplete or
    without the bands."""
    left, bottom, right, top = box
    for ix in range(math.floor(left / tile_m), math.ceil(right / tile_m)):
        for iy in range(math.floor(bottom / tile_m), math.ceil(top / tile_m)):
            if (ix, iy) in written:
                continue
            cell = (
                max(left, ix * tile_m),
                max(bottom, iy * tile_m),
                min(right, (ix + 1) * tile_m),
                min(top, (iy + 1) * tile_m),
            )
            r0, r1, c0, c1 = _pixel_window(cell, left, top, gsd)
            arr[:, r0:r1, c0:c1] = np.nan


def _record_bands(record: Mapping[str, Any], key: tuple[str, str]) -> tuple[str, ...] | None:
    """The band names a completion record lists for a (collection, GSD label) group."""
    for g in record.get("groups") or []:
        if (str(g["collection"]), str(g["gsd_label"])) == key:
            return tuple(str(b) for b in g.get("bands") or ())
    return None


class _RecordGroup:
    """The coordinates of a group that :func:`time_indices`, :func:`items_of` and the band lookup
    read, taken from the tile's completion record (``group_entry``) instead of opening the group;
    with :meth:`with_bands` also what :func:`band_infos_of` reads (the group's attributes and band
    coordinates, read directly by the group's :class:`~pipelines.cubes.shards.RawGroup`)."""

    def __init__(self, coords: dict[str, np.ndarray], attrs: dict[str, Any] | None = None) -> None:
        self.coords = coords
        self.attrs = attrs or {}

    @classmethod
    def with_bands(
        cls, record: Mapping[str, Any], collection: str, label: str, rg: Any
    ) -> _RecordGroup | None:
        """The group as :func:`band_infos_of` sees it through xarray, without opening it: ``None`` when
        a coordinate is stored in a layout :meth:`RawGroup.coord` does not read, or when the record
        and the group disagree on the bands (then the caller opens the group)."""
        g = cls.of(record, collection, label)
        g.attrs = dict(rg.attrs)
        listed = str(rg.arrays.get("reflectance", {}).get("attributes", {}).get("coordinates", "")).split()
        names = ["center_wavelength_nm", "fwhm_nm"] + (["common_name"] if "common_name" in listed else [])
        for name in names:
            if name not in rg.arrays:
                return None
            values = rg.coord(name)
            if values is None or len(values) != len(g.coords["band"]):
                return None
            g.coords[name] = values
        if len(g.coords["band"]) != rg.shape[1]:
            return None
        return g

    @classmethod
    def of(cls, record: Mapping[str, Any], collection: str, label: str) -> _RecordGroup:
        for g in record.get("groups") or []:
            if str(g["collection"]) == collection and str(g["gsd_label"]) == label:
                return cls(
                    {
                        "band": np.array([str(b) for b in g["bands"]], dtype=object),
                        "time": np.array([np.datetime64(str(t), "ns") for t in g["times"]]),
                        "source_items": np.array([str(i) for i in g.get("source_items", [])], dtype=object),
                    }
                )
        raise KeyError(f"{collection}/{label}")

    def __getitem__(self, name: str) -> Any:
        return _Values(self.coords[name])

    def __contains__(self, name: str) -> bool:
        return name in self.coords


@dataclass(frozen=True)
class _Values:
    values: np.ndarray

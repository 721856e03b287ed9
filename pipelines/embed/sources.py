"""Where embedding inputs come from: cube stores or STAC items, read as padded, composited tiles.

A *padded tile* is a tile plus ``margin_m`` metres on every side (the chip-border context, see
:mod:`pipelines.embed.chips`), with one float32 array ``[C, H, W]`` per (collection, GSD) group: the
per-pixel **median of the valid observations in the period** (cloud, shadow and nodata are NaN in
the inputs, so they never enter the median). Reading is streamed in strips of rows (all times, all
bands of the group, ``strip_mb`` at most), so memory stays bounded by the padded tile plus one strip
whatever the number of acquisitions.

* :class:`CubeSource`: a cube store (``pipelines.cubes``). The margin comes from the neighbouring
  tiles' cubes when they are complete, else it is NaN (recorded per tile).
* :class:`CatalogSource`: STAC items, assembled on the fly with ``pipelines.cubes.assemble_tile``
  over the padded bounds, lazily in 256 px blocks, so only the blocks of the current strip are read.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.embed.chips import EmbedConfigError, GroupPixels, nanmedian_time
from pipelines.registry import DEFAULT_CATALOG, BandSpec
from pipelines.runs import TileStatus
from pipelines.storage import redact_url
from pipelines.tiling import Tile, TileGrid

if TYPE_CHECKING:
    from pipelines.cubes import CubeStore

log = logging.getLogger(__name__)

_MIN = dt.datetime(1, 1, 1, tzinfo=dt.UTC)
_MAX = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)


# ------------------------------------------------------------------------------------------
# Periods


@dataclass(frozen=True)
class Period:
    """One time slice of the product: a closed or half-open datetime range (UTC)."""

    text: str
    start: dt.datetime
    end: dt.datetime

    @property
    def label(self) -> str:
        """The slice's time in the store: the start date (the end date for ``../end``)."""
        return (self.start if self.start != _MIN else self.end).date().isoformat()

    def contains(self, t: np.datetime64) -> bool:
        value = dt.datetime.fromisoformat(str(np.datetime_as_string(t, unit="us"))).replace(tzinfo=dt.UTC)
        return self.start <= value <= self.end


def _parse_instant(text: str, end: bool) -> dt.datetime:
    text = text.strip()
    if text in ("", ".."):
        return _MAX if end else _MIN
    try:
        if len(text) == 10:  # a date: the whole day
            d = dt.date.fromisoformat(text)
            t = dt.datetime.combine(d, dt.time.max if end else dt.time.min)
        else:
            t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EmbedConfigError(f"datetime {text!r} is not an RFC 3339 date or date-time") from None
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def parse_periods(text: str) -> list[Period]:
    """``"2023-01-01/2023-12-31"`` -> one period; comma-separated ranges -> several time slices."""
    out = []
    for part in [p.strip() for p in str(text or "").split(",") if p.strip()]:
        if "/" in part:
            a, b = part.split("/", 1)
        else:
            a, b = part, part
        start, end = _parse_instant(a, False), _parse_instant(b, True)
        if start == _MIN and end == _MAX:
            raise EmbedConfigError(f"datetime {part!r} is open at both ends: give at least a start or an end")
        if start > end:
            raise EmbedConfigError(f"datetime {part!r}: start is after end")
        out.append(Period(part, start, end))
    if not out:
        raise EmbedConfigError("datetime is required, e.g. 2023-06-01/2023-08-31 (one composite per range)")
    labels = [p.label for p in out]
    if len(set(labels)) != len(labels):
        raise EmbedConfigError(f"periods {[p.text for p in out]} share a start date; give distinct ranges")
    return out


def search_interval(periods: Sequence[Period]) -> str:
    start = min(p.start for p in periods)
    end = max(p.end for p in periods)
    a = ".." if start == _MIN else start.isoformat().replace("+00:00", "Z")
    b = ".." if end == _MAX else end.isoformat().replace("+00:00", "Z")
    return f"{a}/{b}"


# ------------------------------------------------------------------------------------------
# Padded tiles


@dataclass
class PaddedTile:
    """Composited pixels of a tile plus its margin, for one period."""

    tile: Tile
    time_index: int
    margin_m: float
    groups: list[GroupPixels] = field(default_factory=list)
    input_items: tuple[str, ...] = ()
    observations: dict[str, int] = field(default_factory=dict)  # group label -> acquisitions used
    notes: list[str] = field(default_factory=list)
    status: TileStatus = TileStatus.DONE
    """The outcome the inputs lead to: ``done`` (pixels to embed), ``empty`` (no valid input: written
    as a nodata tile) or ``skipped`` (no cube: not written)."""
    reason: str = ""
    read_s: float = 0.0

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return padded_bounds(self.tile, self.margin_m)


def padded_bounds(tile: Tile, margin_m: float) -> tuple[float, float, float, float]:
    left, bottom, right, top = tile.bounds
    return (left - margin_m, bottom - margin_m, right + margin_m, top + margin_m)


def padded_tile_obj(tile: Tile, margin_m: float) -> Tile:
    """A Tile object with the padded bounds (same id), for loaders that take a Tile."""
    return Tile(tile.tile_id, tile.epsg, padded_bounds(tile, margin_m))


def _band_infos(ds: Any, collection: str, keep: Sequence[str]) -> tuple[list[int], tuple[BandSpec, ...]]:
    sensor = str(ds.attrs.get("sensor", collection))
    gsd = float(ds.attrs["gsd_m"])
    common = ds["common_name"].values if "common_name" in ds.coords else None
    idx, infos = [], []
    for i, name in enumerate(str(b) for b in ds["band"].values):
        if keep and name not in keep:
            continue
        idx.append(i)
        infos.append(
            BandSpec(
                name=name,
                sensor=sensor,
                common_name=str(common[i]) if common is not None else "",
                center_wavelength_nm=float(ds["center_wavelength_nm"].values[i]),
                fwhm_nm=float(ds["fwhm_nm"].values[i]),
                gsd_m=gsd,
            )
        )
    return idx, tuple(infos)


def _time_indices(ds: Any, period: Period) -> list[int]:
    return [
        i for i, t in enumerate(np.asarray(ds["time"].values).astype("datetime64[ns]")) if period.contains(t)
    ]


def _items_of(ds: Any, tsel: Sequence[int]) -> set[str]:
    if "source_items" not in ds.coords and "source_items" not in ds:
        return set()
    vals = np.asarray(ds["source_items"].values)
    return {i for t in tsel for i in str(vals[t]).split(",") if i}


def composite_into(
    out: np.ndarray,
    ds: Any,
    band_idx: Sequence[int],
    tsel: Sequence[int],
    src: tuple[int, int, int, int],
    dst: tuple[int, int],
    strip_mb: float = 64.0,
) -> None:
    """Median over ``tsel`` of ``ds.reflectance[t, band_idx, r0:r1, c0:c1]`` into ``out`` at ``dst``.

    Reads strips of rows sized so one strip (all selected times and bands) is at most ``strip_mb``.
    """
    import dask

    r0, r1, c0, c1 = src
    dr, dc = dst
    if r1 <= r0 or c1 <= c0 or not tsel:
        return
    per_row = max(1, len(tsel) * len(band_idx) * (c1 - c0) * 4)
    rows = max(1, min(r1 - r0, int(strip_mb * 1e6 // per_row)))
    refl = ds["reflectance"]
    tsel_l, bidx = list(tsel), list(band_idx)
    with dask.config.set(scheduler="synchronous"):
        for a in range(r0, r1, rows):
            b = min(r1, a + rows)
            block = refl.isel(time=tsel_l, band=bidx, y=slice(a, b), x=slice(c0, c1)).values
            block = np.asarray(block, dtype=np.float32)
            out[:, dr + (a - r0) : dr + (b - r0), dc : dc + (c1 - c0)] = nanmedian_time(block)


_BLOCK_BYTES = 1 << 20
"""Float32 bytes (all times and bands) converted and composited at a time by :func:`composite_raw_into`."""


def _any_finite(a: np.ndarray, block: int = 1 << 16) -> bool:
    """``np.isfinite(a).any()``, stopping at the first block with a finite value (usually the first)."""
    flat = a.reshape(-1)
    return any(bool(np.isfinite(flat[i : i + block]).any()) for i in range(0, flat.size, block))


def composite_raw_into(
    out: np.ndarray,
    rg: Any,
    band_idx: Sequence[int],
    tsel: Sequence[int],
    src: tuple[int, int, int, int],
    dst: tuple[int, int],
    strip_mb: float = 64.0,
) -> None:
    """:func:`composite_into` at the decode floor: ``rg`` is a group's
    :class:`~pipelines.cubes.shards.RawGroup`; each shard under the window is fetched once and each of
    its chunks of the selected bands decoded once (stored dtype, in passes of bands whose stored
    pixels over all ``tsel`` fit ``strip_mb``), then converted and composited in blocks of rows of at
    most ``_BLOCK_BYTES`` of float32 (cache-sized: converting the whole pass at once costs twice
    as much in memory traffic).
    Output equal to :func:`composite_into` (the same float32 values enter the same median)."""
    r0, r1, c0, c1 = src
    dr, dc = dst
    if r1 <= r0 or c1 <= c0 or not tsel:
        return
    h, w = r1 - r0, c1 - c0
    per_band = max(1, len(tsel) * h * w * rg.dtype.itemsize)
    nb = max(1, min(len(band_idx), int(strip_mb * 1e6 // per_band)))
    with rg.holding():
        for p in range(0, len(band_idx), nb):
            bands = [int(b) for b in band_idx[p : p + nb]]
            raw = np.empty((len(tsel), len(bands), h, w), dtype=rg.dtype)  # [T, nb, h, w] stored dtype
            for i, t in enumerate(tsel):
                rg.read(t, bands, r0, c0, h, w, out=raw[i])
            strip_b = min(strip_mb * 1e6, _BLOCK_BYTES)  # float32 blocks that stay in cache
            rows = max(1, min(h, int(strip_b // max(1, len(tsel) * len(bands) * w * 4))))
            for a in range(0, h, rows):
                b = min(h, a + rows)
                dst_block = out[p : p + len(bands), dr + a : dr + b, dc : dc + w]
                med = rg.median(raw[:, :, a:b]) if len(tsel) > 2 else None  # sorted as integers
                if med is not None:
                    dst_block[...] = med
                else:
                    nanmedian_time(rg.to_float(raw[:, :, a:b]), out=dst_block)  # [T, nb, rows, w] float32


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
        return f"cubes:{redact_url(self.url)}"

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

    def _groups_of(self, record: Mapping[str, Any]) -> list[tuple[str, str]]:
        out = []
        for g in record.get("groups") or []:
            coll = str(g["collection"])
            if self.collections and coll not in self.collections:
                continue
            out.append((coll, str(g["gsd_label"])))
        return out

    def band_infos(self, records: Mapping[str, Mapping[str, Any]]) -> list[BandSpec]:
        """Bands that the request would use (one group dataset opened per (collection, GSD))."""
        store = self.store()
        seen: dict[tuple[str, str], str] = {}
        for tid, rec in records.items():
            for key in self._groups_of(rec):
                seen.setdefault(key, tid)
        infos: list[BandSpec] = []
        for (coll, label), tid in sorted(seen.items()):
            ds = self.open_group(store, tid, coll, label)
            _, bands = _band_infos(ds, coll, self.bands)
            infos.extend(bands)
        return infos

    def read(self, tile: Tile, period: Period, time_index: int, margin_m: float) -> PaddedTile:
        import time

        t0 = time.perf_counter()
        store = self.store()
        out = PaddedTile(tile, time_index, margin_m)
        try:
            center = store.record(tile.tile_id)
        except Exception:
            out.status, out.reason = TileStatus.SKIPPED, "no complete cube for this tile"
            return out
        if center.get("status") != TileStatus.COMPLETE:
            out.status, out.reason = (
                TileStatus.EMPTY,
                f"cube is {center.get('status')}: {center.get('reason') or 'no data'}",
            )
            return out
        left, bottom, right, top = out.bounds
        ix, iy = tile.index
        step = math.ceil(margin_m / self.grid.tile_size_m) if margin_m > 0 else 0
        neighbours: list[tuple[Tile, Mapping[str, Any]]] = [(tile, center)]
        absent = []
        for dx in range(-step, step + 1):
            for dy in range(-step, step + 1):
                if dx == 0 and dy == 0:
                    continue
                nid = f"{tile.epsg}_{ix + dx}_{iy + dy}"
                try:
                    rec = store.record(nid)
                except Exception:
                    absent.append(nid)
                    continue
                if rec.get("status") == TileStatus.COMPLETE:
                    neighbours.append((self.grid.tile(nid), rec))
        if absent:
            out.notes.append(
                f"margin: no cube for {len(absent)} neighbour tile(s) ({', '.join(absent)}): NaN there"
            )
        keys = self._groups_of(center)
        items: set[str] = set()
        for coll, label in keys:
            rg_c: Any = None
            if self.decode == "xarray":
                ds_c: Any = self.open_group(store, tile.tile_id, coll, label)
            else:  # band metadata from the record and the group's zarr.json + coordinate chunks
                rg_c = store.open_raw(tile.tile_id, coll, label)
                ds_c = _RecordGroup.with_bands(center, coll, label, rg_c)
                if ds_c is None:  # coordinates in a layout read only through zarr
                    ds_c = self.open_group(store, tile.tile_id, coll, label)
            gsd = float(ds_c.attrs["gsd_m"])
            bidx, infos = _band_infos(ds_c, coll, self.bands)
            if not infos:
                continue
            h = round((top - bottom) / gsd)
            w = round((right - left) / gsd)
            arr = np.full((len(infos), h, w), np.nan, dtype=np.float32)
            names = [b.name for b in infos]
            nobs = 0
            for ntile, nrec in neighbours:
                if (coll, label) not in self._groups_of(nrec):
                    continue
                if ntile.tile_id == tile.tile_id:
                    ds: Any = ds_c
                elif self.decode == "xarray":
                    ds = self.open_group(store, ntile.tile_id, coll, label)
                else:  # a neighbour: bands, times and items from its completion record (no open)
                    ds = _RecordGroup.of(nrec, coll, label)
                nb_names = [str(b) for b in ds["band"].values]
                if not all(n in nb_names for n in names):
                    out.notes.append(f"margin: {ntile.tile_id} {coll}/{label} lacks some bands")
                    continue
                nidx = [nb_names.index(n) for n in names]
                tsel = _time_indices(ds, period)
                if not tsel:
                    continue
                nl, nb, nr, nt = ntile.bounds
                il, ib, ir, it = max(left, nl), max(bottom, nb), min(right, nr), min(top, nt)
                if ir <= il or it <= ib:
                    continue
                src = (
                    round((nt - it) / gsd),
                    round((nt - ib) / gsd),
                    round((il - nl) / gsd),
                    round((ir - nl) / gsd),
                )
                dst = (round((top - it) / gsd), round((il - left) / gsd))
                if self.decode == "xarray":
                    composite_into(arr, ds, nidx, tsel, src, dst, self.strip_mb)
                else:
                    rg = rg_c if ntile.tile_id == tile.tile_id else store.open_raw(ntile.tile_id, coll, label)
                    composite_raw_into(arr, rg, nidx, tsel, src, dst, self.strip_mb)
                if ntile.tile_id == tile.tile_id:
                    nobs = len(tsel)
                items |= _items_of(ds, tsel)
            del bidx
            out.groups.append(GroupPixels(coll, gsd, infos, arr))
            out.observations[f"{coll}/{label}"] = nobs
        out.groups.sort(key=lambda g: (g.gsd_m, g.collection))
        out.input_items = tuple(sorted(items))
        if not any(_any_finite(g.pixels) for g in out.groups):
            out.status = TileStatus.EMPTY
            out.reason = "no valid pixel in the period (cloud, shadow, nodata or no acquisition)"
        out.read_s = time.perf_counter() - t0
        return out


class _RecordGroup:
    """The coordinates of a group that :func:`_time_indices`, :func:`_items_of` and the band lookup
    read, taken from the tile's completion record (``group_entry``) instead of opening the group;
    with :meth:`with_bands` also what :func:`_band_infos` reads (the group's attributes and band
    coordinates, read directly by the group's :class:`~pipelines.cubes.shards.RawGroup`)."""

    def __init__(self, coords: dict[str, np.ndarray], attrs: dict[str, Any] | None = None) -> None:
        self.coords = coords
        self.attrs = attrs or {}

    @classmethod
    def with_bands(
        cls, record: Mapping[str, Any], collection: str, label: str, rg: Any
    ) -> _RecordGroup | None:
        """The group as :func:`_band_infos` sees it through xarray, without opening it: ``None`` when
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


# ------------------------------------------------------------------------------------------
# STAC items


@dataclass(frozen=True)
class CatalogSource:
    """Padded tiles assembled straight from STAC items (``pipelines.cubes.assemble_tile``)."""

    catalog_url: str
    catalog: str = DEFAULT_CATALOG
    collections: tuple[str, ...] = ("sentinel-2-l2a",)
    bands: tuple[str, ...] = ()
    grid: TileGrid = field(default_factory=TileGrid)
    read_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    strip_mb: float = 64.0
    block_px: int = 512

    def describe(self) -> str:
        return f"catalog:{redact_url(self.catalog_url)}"

    def spec(self) -> Any:
        from pipelines.cubes import CubeSpec

        return CubeSpec(
            grid=self.grid,
            collections=self.collections,
            catalog=self.catalog,
            chunk_px=self.block_px,
            shard_px=self.block_px,
        )

    def band_infos(self) -> list[BandSpec]:
        spec = self.spec()
        infos = []
        for coll in self.collections:
            cs = spec.collection_spec(coll)
            for _label, (gsd, names) in spec.band_groups(coll).items():
                for name in names:
                    if self.bands and name not in self.bands:
                        continue
                    infos.append(replace(cs.sensor.band(name), gsd_m=float(gsd)))
        return infos

    def read(
        self, tile: Tile, period: Period, time_index: int, margin_m: float, items: Sequence[Mapping[str, Any]]
    ) -> PaddedTile:
        import time

        from pipelines.cubes import assemble_tile

        t0 = time.perf_counter()
        out = PaddedTile(tile, time_index, margin_m)
        in_period = [i for i in items if _item_in_period(i, period)]
        if not in_period:
            out.status, out.reason = TileStatus.EMPTY, "no input items for this tile in the period"
            return out
        ptile = padded_tile_obj(tile, margin_m)
        cube = assemble_tile(ptile, in_period, self.spec(), read_options=dict(self.read_options) or None)
        transient = [s for s in cube.skipped if s.transient]
        if transient:
            s = transient[0]
            raise OSError(f"{len(transient)} asset(s) unreachable, e.g. {s.item}:{s.asset}: {s.reason}")
        out.notes.extend(f"skipped {s.item}:{s.asset}: {s.reason}" for s in cube.skipped[:20])
        items_used: set[str] = set()
        for coll, label in cube:
            ds = cube[(coll, label)]
            bidx, infos = _band_infos(ds, coll, self.bands)
            if not infos:
                continue
            tsel = _time_indices(ds, period)
            _, _, h, w = ds["reflectance"].shape
            arr = np.full((len(infos), h, w), np.nan, dtype=np.float32)
            composite_into(arr, ds, bidx, tsel, (0, h, 0, w), (0, 0), self.strip_mb)
            out.groups.append(GroupPixels(coll, float(ds.attrs["gsd_m"]), infos, arr))
            out.observations[f"{coll}/{label}"] = len(tsel)
            items_used |= _items_of(ds, tsel)
        out.groups.sort(key=lambda g: (g.gsd_m, g.collection))
        out.input_items = tuple(sorted(items_used))
        if not any(_any_finite(g.pixels) for g in out.groups):
            out.status = TileStatus.EMPTY
            out.reason = "no valid pixel in the period (cloud, shadow, nodata or no acquisition)"
        out.read_s = time.perf_counter() - t0
        return out


def _item_in_period(item: Mapping[str, Any], period: Period) -> bool:
    from pipelines.cubes import item_datetime

    when = item_datetime(item)
    return when is not None and period.start <= when <= period.end

"""Open an embeddings store: versions, zones, times, provenance and lazy dequantised xarray views.

Example::

    from pipelines.query import open_embeddings

    emb = open_embeddings("s3://bucket/embeddings", storage_options={"anon": False})
    print(emb.describe())                       # version, model, checkpoint, zones, times, extent
    ds = emb.dataset(32631)                     # xr.Dataset, embeddings float32 (time, y, x, dim) whatever the layout on disk
    ds.embeddings.sel(x=slice(7.3e5, 7.4e5), y=slice(4.992e6, 4.98e6)).isel(time=0).load()
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import xarray as xr

from pipelines import storage
from pipelines.embeddings import (
    NODATA_Q,
    EmbeddingsStoreError,
    EmbeddingsVersion,
    ZoneGrid,
    band_first,
    dequantize,
    list_complete_tiles,
    list_versions,
    open_root,
    parse_time,
    read_tile_record,
    version_zones,
    zarr_store,
)

log = logging.getLogger(__name__)

CORRUPT_DATA_ERRORS: tuple[type[Exception], ...] = (ValueError, RuntimeError, EOFError, zlib.error)
"""What decoding a corrupt or truncated shard raises (checksum, codec, short read); storage access
errors (OSError and the clients' own) are not among them: they fail the query, never read as empty."""

TimeLike = int | str | date | datetime | np.datetime64 | None


class QueryError(EmbeddingsStoreError):
    """Bad query input; the message names the valid range or choices."""


class BrokenStoreError(EmbeddingsStoreError):
    """A store that cannot be queried as written (a zone's coordinates never written by a killed
    ``aom embed``); exit 2 like every unusable store, the message names the repair."""


@dataclass(frozen=True)
class TileRef:
    """One complete tile of one zone at one time, located in the zone grid."""

    tile_id: str
    epsg: int
    bounds: tuple[float, float, float, float]
    row0: int
    col0: int


def _describe_version(v: EmbeddingsVersion) -> str:
    return (
        f"{v.name} (model {v.model} {v.model_version}, checkpoint {v.checkpoint_sha256[:12]}, "
        f"dim {v.dim}, {v.token_ground_m:g} m tokens, times {', '.join(v.times)})"
    )


def available_versions(url: str, storage_options: Mapping[str, Any] | None = None) -> list[EmbeddingsVersion]:
    """All versions (model/checkpoint) in a store."""
    return list_versions(storage.normalise_url(url), storage_options)


@dataclass
class Embeddings:
    """One version of an embeddings store, opened for reading. Cheap to create; reads lazily."""

    url: str
    version: EmbeddingsVersion
    versions: tuple[EmbeddingsVersion, ...]
    zones: tuple[int, ...]
    storage_options: dict[str, Any] = field(default_factory=dict)
    created: str | None = None
    _datasets: dict[int, xr.Dataset] = field(default_factory=dict, repr=False)
    _arrays: dict[int, Any] = field(default_factory=dict, repr=False)
    _tiles: dict[int, dict[int, list[TileRef]]] = field(default_factory=dict, repr=False)
    _tile_cache: OrderedDict[tuple[int, int, int, int], np.ndarray] = field(
        default_factory=OrderedDict, repr=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    unreadable: dict[str, str] = field(default_factory=dict)
    """Recorded tiles whose data could not be decoded (corrupt or truncated shard): tile id ->
    reason. Readers skip them (nodata) and name them here and in a warning."""

    def __getstate__(self) -> dict[str, Any]:  # picklable for dask.distributed: caches stay behind
        state = dict(self.__dict__)
        state.update(_datasets={}, _arrays={}, _tile_cache=OrderedDict())
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self.version.name

    @property
    def times(self) -> tuple[str, ...]:
        return self.version.times

    @property
    def dim(self) -> int:
        return self.version.dim

    @property
    def token_ground_m(self) -> float:
        return self.version.token_ground_m

    @property
    def provenance(self) -> dict[str, Any]:
        """Model identity and configuration of this version."""
        v = self.version
        return {
            "version": v.name,
            "model": v.model,
            "model_version": v.model_version,
            "checkpoint_sha256": v.checkpoint_sha256,
            "config": dict(v.config),
            "quantisation": v.quantisation,
            "token_ground_m": v.token_ground_m,
            "tile_size_m": v.tile_size_m,
            "created": self.created,
        }

    def grid(self, epsg: int) -> ZoneGrid:
        return ZoneGrid(int(epsg), self.version.token_ground_m, self.version.tile_size_m)

    def describe(self) -> str:
        lines = [
            f"embeddings {storage.redact_url(self.url)}",
            f"  version  {_describe_version(self.version)}",
        ]
        if len(self.versions) > 1:
            lines.append(f"  others   {', '.join(v.name for v in self.versions if v.name != self.name)}")
        for ti, t in enumerate(self.times):
            count = sum(len(self.tiles(ti).get(z, [])) for z in self.zones)
            lines.append(f"  time {ti}   {t}: {count} complete tile(s)")
        lines.append(f"  zones    {', '.join(f'EPSG:{z}' for z in self.zones) or '(none)'}")
        try:
            w, s, e, n = self.extent_wgs84()
            lines.append(f"  extent   lon {w:.4f}..{e:.4f}, lat {s:.4f}..{n:.4f}")
        except QueryError:
            lines.append("  extent   (no data)")
        return "\n".join(lines)

    # ------------------------------------------------------------------ time
    def time_index(self, time: TimeLike = None, *, require_data: bool = True) -> int:
        """Index of ``time``: an int index, an ISO date/datetime (a date matches that day), or None for
        the latest time with data. Raises :class:`QueryError` naming the valid times."""
        times = self.times
        with_data = [ti for ti in range(len(times)) if any(self.tiles(ti).values())]
        if time is None:
            if not with_data:
                raise QueryError(
                    f"version {self.name!r} has no complete tiles at any time ({', '.join(times)})"
                )
            return with_data[-1]
        if isinstance(time, int | np.integer) and not isinstance(time, bool):
            if not 0 <= int(time) < len(times):
                raise QueryError(f"time index {time} out of range; valid 0..{len(times) - 1}: {list(times)}")
            ti = int(time)
        else:
            text = str(np.datetime_as_string(time, unit="s")) if isinstance(time, np.datetime64) else None
            if isinstance(time, datetime | date):
                text = time.isoformat()
            text = text or str(time)
            try:
                wanted = parse_time(text)
            except EmbeddingsStoreError:
                raise QueryError(
                    f"time {time!r} is not an ISO date/datetime; valid times: {list(times)}"
                ) from None
            parsed = [parse_time(t) for t in times]
            hits = [i for i, t in enumerate(parsed) if t == wanted]
            if not hits and len(text) <= 10:  # a bare date matches any time on that day
                hits = [i for i, t in enumerate(parsed) if t.date() == wanted.date()]
            if len(hits) != 1:
                raise QueryError(
                    f"time {text!r} {'is ambiguous' if hits else 'is not in'} version {self.name!r}; "
                    f"valid times: {list(times)}"
                )
            ti = hits[0]
        if require_data and ti not in with_data:
            raise QueryError(
                f"no data at time {times[ti]!r} in version {self.name!r}; times with data: "
                f"{[times[i] for i in with_data] or '(none)'}"
            )
        return ti

    # ------------------------------------------------------------------ tiles
    def tiles(self, time_index: int) -> dict[int, list[TileRef]]:
        """Complete tiles per zone at one time (from the completion-record names)."""
        ti = int(time_index)
        if ti not in self._tiles:
            found = list_complete_tiles(self.url, self.name, ti, self.storage_options).get(ti, [])
            per_zone: dict[int, list[TileRef]] = {}
            s = self.version.tile_size_m
            for tid in found:  # "<epsg>_<ix>_<iy>", origin (ix * s, iy * s): parsed, not re-validated
                epsg, ix, iy = (int(p) for p in tid.split("_"))
                bounds = (ix * s, iy * s, (ix + 1) * s, (iy + 1) * s)
                r0, _, c0, _ = self.grid(epsg).tile_window(bounds)
                per_zone.setdefault(epsg, []).append(TileRef(tid, epsg, bounds, r0, c0))
            self._tiles[ti] = per_zone
        return self._tiles[ti]

    def tile_record(self, tile_id: str, time_index: int) -> dict[str, Any]:
        """The completion record of a tile: provenance, status, quantisation error."""
        return read_tile_record(self.url, self.name, tile_id, time_index, self.storage_options)

    def extent(self, epsg: int, time_index: int | None = None) -> tuple[float, float, float, float] | None:
        """Bounds (zone CRS) of the complete tiles of one zone, or None."""
        ti = self.time_index(None) if time_index is None else time_index
        refs = self.tiles(ti).get(int(epsg), [])
        if not refs:
            return None
        b = np.array([r.bounds for r in refs])
        return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())

    def extent_wgs84(self, time_index: int | None = None) -> tuple[float, float, float, float]:
        """lon/lat bounds of all complete tiles (at the latest time with data by default)."""
        from pyproj import Transformer

        ti = self.time_index(None) if time_index is None else time_index
        lons: list[float] = []
        lats: list[float] = []
        for epsg, refs in self.tiles(ti).items():
            if not refs:
                continue
            tr = Transformer.from_crs(epsg, 4326, always_xy=True)
            for r in refs:
                w, s, e, n = tr.transform_bounds(*r.bounds, densify_pts=11)
                lons += [w, e]
                lats += [s, n]
        if not lons:
            raise QueryError(f"version {self.name!r} has no complete tiles")
        return min(lons), min(lats), max(lons), max(lats)

    # ------------------------------------------------------------------ raw access
    def zarr_array(self, epsg: int) -> Any:
        """The raw ``embeddings`` zarr array of a zone (int8 codes or float16)."""
        import zarr

        epsg = int(epsg)
        if epsg not in self._arrays:
            if epsg not in self.zones:
                raise QueryError(
                    f"version {self.name!r} has no zone EPSG:{epsg}; zones: {[f'EPSG:{z}' for z in self.zones]}"
                )
            store = zarr_store(self.url, self.storage_options, read_only=True)
            self._arrays[epsg] = zarr.open_array(store=store, path=f"{self.name}/{epsg}/embeddings", mode="r")
        return self._arrays[epsg]

    def band_first(self, epsg: int) -> bool:
        """True for the format-2 layout ``(time, dim, y, x)``; False for format 1 ``(time, y, x, dim)``."""
        return band_first(self.zarr_array(epsg))

    def read_window(
        self, epsg: int, time_index: int, rows: slice, cols: slice, decode: bool = True
    ) -> np.ndarray:
        """Eager read of a token window ``[rows, cols, dim]`` (float32 with NaN nodata when ``decode``),
        whichever the store's layout (format 2 is band-first on disk, format 1 dim-last)."""
        arr = self.zarr_array(epsg)
        if self.band_first(epsg):
            raw = np.ascontiguousarray(np.asarray(arr[int(time_index), :, rows, cols]).transpose(1, 2, 0))
        else:
            raw = np.asarray(arr[int(time_index), rows, cols, :])
        return dequantize(raw) if decode else raw

    def read_recorded(
        self, epsg: int, time_index: int, rows: slice, cols: slice, decode: bool = True
    ) -> np.ndarray:
        """:meth:`read_window` as every query reads: tokens outside a tile with a completion record
        are nodata (a killed writer's shards never count), and a recorded tile whose data cannot be
        decoded (a corrupt or truncated shard) is skipped as nodata and named in
        :attr:`unreadable` and a warning, instead of failing the whole query."""
        ti, n = int(time_index), self.version.tokens_per_tile
        r0, r1, c0, c1 = int(rows.start), int(rows.stop), int(cols.start), int(cols.stop)
        refs = [
            r
            for r in self.tiles(ti).get(int(epsg), [])
            if r.row0 < r1 and r.row0 + n > r0 and r.col0 < c1 and r.col0 + n > c0
        ]
        arr = self.zarr_array(epsg)
        nodata: Any = NODATA_Q if arr.dtype == np.int8 else np.nan
        dim = arr.shape[1] if self.band_first(epsg) else arr.shape[-1]
        out = np.full((r1 - r0, c1 - c0, dim), nodata, dtype=arr.dtype)
        regions: list[tuple[TileRef, np.ndarray, int, int]] = []  # tile, data, data's row0/col0
        try:
            raw = self.read_window(epsg, ti, slice(r0, r1), slice(c0, c1), decode=False)
            regions = [(r, raw, r0, c0) for r in refs]
        except CORRUPT_DATA_ERRORS:  # find the tile(s) at fault: read tile by tile
            for r in refs:
                try:
                    rows_t, cols_t = slice(r.row0, r.row0 + n), slice(r.col0, r.col0 + n)
                    data = self.read_window(epsg, ti, rows_t, cols_t, decode=False)
                except CORRUPT_DATA_ERRORS as exc:
                    reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                    self.unreadable[r.tile_id] = reason
                    log.warning(
                        "skipping tile %s of %s: its data cannot be read (%s)", r.tile_id, self.name, reason
                    )
                    continue
                regions.append((r, data, r.row0, r.col0))
        for r, data, d_r0, d_c0 in regions:  # the tile's part of the window
            a0, a1 = max(r.row0, r0), min(r.row0 + n, r1)
            b0, b1 = max(r.col0, c0), min(r.col0 + n, c1)
            out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = data[a0 - d_r0 : a1 - d_r0, b0 - d_c0 : b1 - d_c0]
        return dequantize(out) if decode else out

    def read_tile(self, ref: TileRef, time_index: int) -> np.ndarray:
        """Decoded ``[n, n, dim]`` array of one tile (small LRU cache)."""
        key = (ref.epsg, int(time_index), ref.row0, ref.col0)
        with self._lock:
            if key in self._tile_cache:
                self._tile_cache.move_to_end(key)
                return self._tile_cache[key]
        n = self.version.tokens_per_tile
        arr = self.read_recorded(
            ref.epsg, time_index, slice(ref.row0, ref.row0 + n), slice(ref.col0, ref.col0 + n)
        )
        with self._lock:
            self._tile_cache[key] = arr
            while len(self._tile_cache) > 32:
                self._tile_cache.popitem(last=False)
        return arr

    # ------------------------------------------------------------------ xarray
    def dataset(self, epsg: int | None = None) -> xr.Dataset:
        """Lazy xarray view of one zone: ``embeddings`` float32 ``(time, y, x, dim)`` dequantised on
        read (NaN = nodata), ``pooled`` float32, CF ``spatial_ref`` (rioxarray/odc-geo read the CRS).
        ``epsg`` may be omitted when the version has a single zone."""
        if epsg is None:
            if len(self.zones) != 1:
                raise QueryError(
                    f"version {self.name!r} has {len(self.zones)} zones; pass one of "
                    f"{[z for z in self.zones]} (or use select() to merge zones)"
                )
            epsg = self.zones[0]
        epsg = int(epsg)
        if epsg not in self.zones:
            raise QueryError(f"version {self.name!r} has no zone EPSG:{epsg}; zones: {list(self.zones)}")
        if epsg not in self._datasets:
            store = zarr_store(self.url, self.storage_options, read_only=True)
            n = self.version.tokens_per_tile
            # Dask chunks of 8 x 8 tiles: a zone has ~10^5 tiles, one Dask chunk per tile would make
            # opening slow; slicing still reads only the shards it touches.
            chunks = {"time": 1, "y": 8 * n, "x": 8 * n, "dim": -1, "tile_y": 512, "tile_x": -1}
            ds = xr.open_zarr(
                store, group=f"{self.name}/{epsg}", consolidated=False, mask_and_scale=False, chunks=chunks
            )
            self._check_coords(epsg, ds)
            # one view whatever the layout on disk: (time, y, x, dim) like every query function
            raw = ds["embeddings"].transpose("time", "y", "x", "dim")
            data = raw.data.map_blocks(dequantize, dtype=np.float32)
            attrs = {
                k: v for k, v in raw.attrs.items() if k not in ("nodata", "dequantise", "coordinates")
            } | {"dequantised": "yes", "nodata": "NaN", "units": "1"}
            ds["embeddings"] = (raw.dims, data, attrs)
            ds["pooled"] = ds["pooled"].transpose("time", "tile_y", "tile_x", "dim").astype(np.float32)
            ds.attrs.update(
                {
                    "version": self.name,
                    "model": self.version.model,
                    "model_version": self.version.model_version,
                    "checkpoint_sha256": self.version.checkpoint_sha256,
                }
            )
            self._datasets[epsg] = ds
        return self._datasets[epsg]

    def _check_coords(self, epsg: int, ds: xr.Dataset) -> None:
        """Refuse a zone whose coordinates are not its grid's (a run killed between creating a
        coordinate array and writing its values left it at its fill value, all 0.0; every query that
        goes through :meth:`dataset` then placed its output at the wrong place). Only the first and
        last values of the index coordinates xarray has already loaded are compared."""
        g = self.grid(epsg)
        grid_coords = {
            "x": g.x_coords(),
            "y": g.y_coords(),
            "tile_x": g.tile_x_coords(),
            "tile_y": g.tile_y_coords(),
        }
        want: dict[str, tuple[int, float, float]] = {
            name: (len(c), float(c[0]), float(c[-1])) for name, c in grid_coords.items()
        }
        if self.times:
            first, last = (parse_time(t).timestamp() for t in (self.times[0], self.times[-1]))
            want["time"] = (len(self.times), first, last)
        bad = []
        for name, (n, v0, v1) in want.items():
            if name not in ds.coords:  # x and y place every output; the others only label
                if name in ("x", "y"):
                    bad.append(f"{name} (missing)")
                continue
            vals = np.asarray(ds[name].values)
            if name == "time" and np.issubdtype(vals.dtype, np.datetime64):
                vals = vals.astype("datetime64[ms]").astype(np.int64) / 1000.0
            vals = vals.astype(np.float64)
            if vals.shape != (n,) or not np.allclose(vals[[0, -1]], (v0, v1), rtol=0.0, atol=1e-3):
                got = f"{vals[0]:g}..{vals[-1]:g}" if vals.size else "empty"
                bad.append(f"{name} ({got}, expected {v0:g}..{v1:g})")
        if bad:
            raise BrokenStoreError(
                f"zone EPSG:{epsg} of {storage.redact_url(self.url)} version {self.name!r} has coordinates "
                f"that were never written ({'; '.join(bad)}): a run of 'aom embed' was killed before "
                "writing them; rerun 'aom embed' on this store (the same request) to repair it"
            )


def open_embeddings(
    url: str, version: str | None = None, storage_options: Mapping[str, Any] | None = None
) -> Embeddings:
    """Open one version of an embeddings store (local path or any fsspec URL such as ``s3://``).

    With ``version=None`` the store must hold exactly one version; otherwise the error lists the
    available versions (model, checkpoint) to choose from. Nothing but metadata is read here.
    """
    url = storage.normalise_url(url)
    opts = dict(storage_options or {})
    try:
        root = open_root(url, opts)
        versions = tuple(list_versions(url, opts))
    except QueryError:
        raise
    except EmbeddingsStoreError as exc:
        raise QueryError(str(exc)) from None
    if not versions:
        raise QueryError(f"embeddings store {storage.redact_url(url)} holds no versions yet")
    by_name = {v.name: v for v in versions}
    if version is None:
        if len(versions) > 1:
            listing = "; ".join(_describe_version(v) for v in versions)
            raise QueryError(
                f"{storage.redact_url(url)} holds {len(versions)} versions; pick one with version=...: {listing}"
            )
        chosen = versions[0]
    elif version in by_name:
        chosen = by_name[version]
    else:
        raise QueryError(
            f"unknown embeddings version {version!r} in {storage.redact_url(url)}; available: "
            + "; ".join(_describe_version(v) for v in versions)
        )
    created = root[chosen.name].attrs.get("created")
    zones = tuple(version_zones(url, chosen.name, opts))
    return Embeddings(url, chosen, versions, zones, opts, str(created) if created else None)


def as_points(lon: float | Sequence[float], lat: float | Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    lon_a = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    lat_a = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    if lon_a.shape != lat_a.shape:
        raise QueryError(f"lon and lat must have the same length ({lon_a.size} vs {lat_a.size})")
    if np.any(np.abs(lat_a) > 90) or np.any(np.abs(lon_a) > 180):
        raise QueryError("lon must be within -180..180 and lat within -90..90 (degrees, EPSG:4326)")
    return lon_a, lat_a

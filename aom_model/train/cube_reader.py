"""A small read-only reader of cube stores (Zarr v3), with xarray + zarr + fsspec only.

Store layout (written by ``pipelines.cubes``; ``pipelines.testing.cubes`` writes the same for tests):

    <url>/_tiles/<tile_id>.json              completion record: {"status": "complete" | "empty", ...}
    <url>/<tile_id>/<collection>/<gsd_label> xarray Dataset: reflectance (time, band, y, x) int16,
                                             scale 1e-4, _FillValue -32768 (-> float32 NaN = no data)
                                             coords band, center_wavelength_nm, fwhm_nm, common_name,
                                             x, y, time, spatial_ref; attrs sensor, collection, gsd_m

Only tiles with a ``complete`` record are readable (a tile without a record is an interrupted
build). This module deliberately imports neither the pipelines package nor any STAC library, so
training and inference images need only torch + xarray + zarr + fsspec.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.errors import InputError
from pipelines.storage import filesystem, is_local, normalise_url, redact_url, s3_options

log = logging.getLogger(__name__)


class CubeDataError(InputError):
    """A cube store whose content cannot be used (bad metadata, unreadable record, no valid chips)."""


@dataclass(frozen=True)
class GroupMeta:
    """Metadata of one (tile, collection, GSD) group, read once (no pixel data)."""

    tile_id: str
    collection: str
    gsd_label: str
    sensor: str
    gsd_m: float
    bands: tuple[str, ...]
    wavelength_nm: tuple[float, ...]
    fwhm_nm: tuple[float, ...]
    height: int
    width: int
    x0: float  # left edge (CRS units, m)
    y0: float  # top edge
    times: tuple[int, ...]  # datetime64[ns] as int

    @property
    def band_keys(self) -> tuple[str, ...]:
        return tuple(f"{self.sensor}/{b}" for b in self.bands)

    @property
    def extent_m(self) -> tuple[float, float]:  # (height, width) in metres
        return self.height * self.gsd_m, self.width * self.gsd_m


class CubeStore:
    """Read access to one cube store (a local path or any fsspec URL such as ``s3://``)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = normalise_url(url)
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = filesystem(self.url, self.storage_options)
        self._records: dict[str, dict[str, Any]] | None = None

    @classmethod
    def open(cls, url: str, storage_options: Mapping[str, Any] | None = None) -> CubeStore:
        store = cls(url, storage_options)
        if not store.fs.exists(store.root):
            raise CubeDataError(f"cube store {redact_url(store.url)} does not exist")
        return store

    def __repr__(self) -> str:
        return f"CubeStore({redact_url(self.url)!r})"

    # -- completion records ---------------------------------------------------------------------
    def tile_records(self) -> dict[str, dict[str, Any]]:
        """tile_id -> completion record, for every record present (any status)."""
        if self._records is None:
            recs: dict[str, dict[str, Any]] = {}
            base = posixpath.join(self.root, "_tiles")
            paths = sorted(self.fs.glob(posixpath.join(base, "*.json"))) if self.fs.exists(base) else []
            for p in paths:
                tile_id = posixpath.basename(p)[: -len(".json")]
                try:
                    with self.fs.open(p, "rb") as fh:
                        rec = json.loads(fh.read())
                except (OSError, ValueError) as e:
                    raise CubeDataError(f"{self}: unreadable completion record {tile_id}.json: {e}") from e
                if not isinstance(rec, dict) or rec.get("status") not in ("complete", "empty"):
                    raise CubeDataError(
                        f"{self}: completion record {tile_id}.json has no valid status "
                        f"(expected 'complete' or 'empty'): {rec!r}"
                    )
                recs[tile_id] = rec
            self._records = recs
        return self._records

    def complete_tiles(self) -> list[str]:
        return sorted(t for t, r in self.tile_records().items() if r["status"] == "complete")

    def empty_tiles(self) -> list[str]:
        return sorted(t for t, r in self.tile_records().items() if r["status"] == "empty")

    # -- groups ---------------------------------------------------------------------------------
    def list_groups(self, tile_id: str) -> list[tuple[str, str]]:
        """(collection, gsd_label) of every group of a tile."""
        base = posixpath.join(self.root, tile_id)
        out = []
        for p in sorted(self.fs.glob(posixpath.join(base, "*", "*", "zarr.json"))):
            rel = posixpath.relpath(posixpath.dirname(p), base)
            coll, gsd = rel.split("/")
            out.append((coll, gsd))
        return out

    def zarr_store(self) -> Any:
        import zarr.storage

        if is_local(self.url):
            return zarr.storage.LocalStore(self.root, read_only=True)
        opts = s3_options(self.storage_options) if self.url.startswith("s3://") else self.storage_options
        return zarr.storage.FsspecStore.from_url(self.url, storage_options=dict(opts), read_only=True)

    def open_group(self, tile_id: str, collection: str, gsd_label: str, store: Any = None) -> Any:
        """The group as a lazily indexed xarray Dataset (no dask: slicing reads only needed chunks)."""
        import xarray as xr

        return xr.open_zarr(
            store if store is not None else self.zarr_store(),
            group=f"{tile_id}/{collection}/{gsd_label}",
            zarr_format=3,
            consolidated=False,
            chunks=None,
        )

    def open_tile(self, tile_id: str) -> dict[tuple[str, str], Any]:
        if tile_id not in self.complete_tiles():
            raise CubeDataError(f"{self}: tile {tile_id!r} has no 'complete' record; it cannot be read")
        store = self.zarr_store()
        return {(c, g): self.open_group(tile_id, c, g, store) for c, g in self.list_groups(tile_id)}


def group_meta(tile_id: str, collection: str, gsd_label: str, ds: Any, where: str = "") -> GroupMeta:
    """Validate a group's metadata and summarise it; raise ``CubeDataError`` naming what is wrong."""
    name = f"{where}{tile_id}/{collection}/{gsd_label}"
    if "reflectance" not in ds:
        raise CubeDataError(f"{name}: no 'reflectance' variable")
    da = ds["reflectance"]
    if tuple(da.dims) != ("time", "band", "y", "x"):
        raise CubeDataError(f"{name}: reflectance dims {da.dims} != ('time', 'band', 'y', 'x')")
    for coord in ("band", "center_wavelength_nm", "fwhm_nm", "x", "y", "time"):
        if coord not in ds.coords:
            raise CubeDataError(f"{name}: missing coordinate {coord!r}")
    bands = tuple(str(b) for b in ds["band"].values)
    wl = np.asarray(ds["center_wavelength_nm"].values, dtype=np.float64)
    fw = np.asarray(ds["fwhm_nm"].values, dtype=np.float64)
    if len(set(bands)) != len(bands):
        raise CubeDataError(f"{name}: duplicate band names {bands}")
    if wl.shape != (len(bands),) or fw.shape != (len(bands),):
        raise CubeDataError(f"{name}: band metadata lengths do not match the {len(bands)} bands")
    if not (np.isfinite(wl).all() and (wl > 0).all() and np.isfinite(fw).all() and (fw > 0).all()):
        raise CubeDataError(f"{name}: center_wavelength_nm / fwhm_nm must be finite and > 0: {wl}, {fw}")
    sensor = str(ds.attrs.get("sensor", ""))
    if not sensor:
        raise CubeDataError(f"{name}: missing 'sensor' attribute")
    try:
        gsd = float(ds.attrs["gsd_m"])
    except (KeyError, TypeError, ValueError):
        raise CubeDataError(f"{name}: missing or invalid 'gsd_m' attribute") from None
    x = np.asarray(ds["x"].values, dtype=np.float64)
    y = np.asarray(ds["y"].values, dtype=np.float64)
    if not math.isfinite(gsd) or gsd <= 0 or len(x) < 1 or len(y) < 1:
        raise CubeDataError(f"{name}: invalid gsd_m {gsd} or empty grid")
    if len(x) > 1 and abs(abs(x[1] - x[0]) - gsd) > 1e-3 * gsd:
        raise CubeDataError(f"{name}: x spacing {abs(x[1] - x[0])} != gsd_m {gsd}")
    times = tuple(int(t) for t in np.asarray(ds["time"].values).astype("datetime64[ns]").astype(np.int64))
    return GroupMeta(
        tile_id=tile_id,
        collection=collection,
        gsd_label=gsd_label,
        sensor=sensor,
        gsd_m=gsd,
        bands=bands,
        wavelength_nm=tuple(float(v) for v in wl),
        fwhm_nm=tuple(float(v) for v in fw),
        height=len(y),
        width=len(x),
        x0=float(x.min() - gsd / 2),
        y0=float(y.max() + gsd / 2),
        times=times,
    )


def read_window(ds: Any, t: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """[C, h, w] float32 reflectance of one acquisition (NaN = no data / cloud)."""
    arr = ds["reflectance"].isel(time=t, y=slice(y0, y0 + h), x=slice(x0, x0 + w)).values
    out = np.asarray(arr, dtype=np.float32)
    if out.shape[-2:] != (h, w):
        raise CubeDataError(f"window {h}x{w} at ({y0}, {x0}) is outside the grid (got {out.shape})")
    return out

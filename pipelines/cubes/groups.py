"""Reading one group of a cube store: its validated metadata summary and windows of its pixels.

A group is the xarray Dataset at ``<tile_id>/<collection>/<gsd_label>`` (see :mod:`pipelines.cubes.store`).
:func:`group_meta` checks, once per group, what every chip or window reader relies on (dims, band
coordinates, finite positive wavelength/FWHM, ``sensor``, ``gsd_m`` against the coordinate spacing)
and raises :class:`~pipelines.errors.CubeDataError` naming what is wrong; :func:`read_window` reads
one acquisition's window as float32 reflectance with NaN where missing. Both work on a group opened
by :meth:`CubeStore.open_group(..., lazy=True) <pipelines.cubes.store.CubeStore.open_group>`, so a
window read touches only the chunks under it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.errors import CubeDataError


@dataclass(frozen=True)
class GroupMeta:
    """Metadata of one (tile, collection, GSD) group, read once (no pixel data)."""

    tile_id: str
    """The tile the group belongs to."""
    collection: str
    """Registry collection id (``sentinel-2-l2a``)."""
    gsd_label: str
    """The group's name below the collection (``10m``)."""
    sensor: str
    """Registry sensor name (``sentinel-2-msi``), the prefix of the band keys."""
    gsd_m: float
    """Pixel size in metres."""
    bands: tuple[str, ...]
    """Band names in stored order."""
    wavelength_nm: tuple[float, ...]
    """Centre wavelength per band (nm)."""
    fwhm_nm: tuple[float, ...]
    """Full width at half maximum per band (nm)."""
    height: int
    """Rows of the grid."""
    width: int
    """Columns of the grid."""
    x0: float
    """Left edge of the grid (CRS units, m)."""
    y0: float
    """Top edge of the grid (CRS units, m)."""
    times: tuple[int, ...]
    """Acquisition times as datetime64[ns] integers, in stored order."""

    @property
    def band_keys(self) -> tuple[str, ...]:
        """``<sensor>/<band>`` per band: the identity of a band across stores."""
        return tuple(f"{self.sensor}/{b}" for b in self.bands)

    @property
    def extent_m(self) -> tuple[float, float]:
        """(height, width) of the grid in metres."""
        return self.height * self.gsd_m, self.width * self.gsd_m


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

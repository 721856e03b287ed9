"""Padded tiles and the median composite that fills them (shared by the cube and catalog sources)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.embed.chips import GroupPixels, nanmedian_time
from pipelines.embed.sources.periods import Period
from pipelines.registry import BandSpec
from pipelines.runs import TileStatus
from pipelines.tiling import Tile

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
    cube_written_at: str | None = None
    """``written_at`` of the tile's cube record the pixels came from (``pipelines.embed.freshness``)."""
    margin_cubes: dict[str, str] = field(default_factory=dict)
    """Neighbour tile id -> ``written_at`` of each complete cube record the margin was read from."""
    considered_items: tuple[str, ...] | None = None
    """Catalog sources: ids of the items of the period the tile was given (found by the run's search),
    whether or not they entered the composite (``pipelines.embed.freshness``)."""
    item_versions: dict[str, str | None] | None = None
    """Id -> version (``pipelines.search.item_version``: ``updated``, else ``created``, and
    the processing versions) of ``considered_items`` (catalog sources) or of the items the tile's own
    cube record holds in the period (cube sources, as that record gives them), so a reprocessed item
    (same id, newer version) makes the record stale (``pipelines.embed.freshness``)."""
    margin_item_versions: dict[str, dict[str, str | None]] | None = None
    """Cube sources: neighbour tile id (of ``margin_cubes``) -> id -> version, as that neighbour's
    cube record gives them, of the items it holds in the period in the tile's own groups (those
    composited into the margin), where it differs from ``item_versions`` or that lacks it: a
    neighbour rebuilt with a reprocessed item (same id) changes the margin (``pipelines.embed.freshness``)."""
    observations: dict[str, int] = field(default_factory=dict)  # group label -> acquisitions used
    notes: list[str] = field(default_factory=list)
    status: TileStatus = TileStatus.DONE
    """The outcome the inputs lead to: ``done`` (pixels to embed), ``empty`` (no valid input: written
    as a nodata tile) or ``skipped`` (no cube: not written)."""
    reason: str = ""
    read_s: float = 0.0
    replaces: str | None = None
    """A tile embedded again (its inputs changed): the digest of the completion record it replaces
    (:func:`pipelines.embed.tasks.record_digest`), so that a record another run wrote meanwhile is
    told from it; None for a tile without a record."""
    lease_owner: str | None = None
    """The owner of the run's lease on the tile, which the task that writes it takes over
    (:mod:`pipelines.embed.claims`)."""

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return padded_bounds(self.tile, self.margin_m)


def padded_bounds(tile: Tile, margin_m: float) -> tuple[float, float, float, float]:
    left, bottom, right, top = tile.bounds
    return (left - margin_m, bottom - margin_m, right + margin_m, top + margin_m)


def padded_tile_obj(tile: Tile, margin_m: float) -> Tile:
    """A Tile object with the padded bounds (same id), for loaders that take a Tile."""
    return Tile(tile.tile_id, tile.epsg, padded_bounds(tile, margin_m))


def band_infos_of(ds: Any, collection: str, keep: Sequence[str]) -> tuple[list[int], tuple[BandSpec, ...]]:
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


def time_indices(ds: Any, period: Period) -> list[int]:
    return [
        i for i, t in enumerate(np.asarray(ds["time"].values).astype("datetime64[ns]")) if period.contains(t)
    ]


def items_of(ds: Any, tsel: Sequence[int]) -> set[str]:
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


def any_finite(a: np.ndarray, block: int = 1 << 16) -> bool:
    """``np.isfinite(a).any()`` for ``a [C, H, W]`` (a view is never copied whole), stopping at the first
    block of rows with a finite value (usually the first)."""
    rows = max(1, block // max(1, a.shape[0] * a.shape[2]))
    return any(bool(np.isfinite(a[:, r : r + rows]).any()) for r in range(0, a.shape[1], rows))


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
                elif len(tsel) == 1:  # one acquisition (a stored composite): decoded in place
                    rg.to_float(raw[0, :, a:b], out=dst_block)
                else:
                    nanmedian_time(rg.to_float(raw[:, :, a:b]), out=dst_block)  # [T, nb, rows, w] float32

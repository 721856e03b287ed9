"""Tile vectors in few objects: one consolidated grid per zone, on the tile lattice, with its own
grid mapping.

Workers write each tile's pooled vector into ``<version>/<epsg>/pooled`` (one chunk per tile, so
concurrent writers never share an object). Reading a whole zone that way costs one request per tile
(~1.4 * 10^5 per UTM zone at 7680 m). :func:`consolidate_tile_vectors` (the end of a run, or by
hand; one writer at a time: it holds the store's lease ``_leases/shared.json``) copies the recorded
tiles into::

    <version>/<epsg>/tiles/                 group: proj:/spatial conventions at tile_size_m
      vectors (time, dim, tile_y, tile_x)   float16, NaN = no tile; chunks of 256 x 128 tiles (a zone: 6 objects)
      tile_x (tile_x), tile_y (tile_y)      tile centres (m), the zone's own tile_x/tile_y; time (time)
      spatial_ref ()                        CF grid mapping, GeoTransform at tile_size_m (not the token grid)

(format 3; versions of formats 1 and 2 keep ``vectors (time, dim, y, x)`` with the group's own ``x``/``y``,
which a DataTree cannot align with the zone's token ``x``/``y``: :func:`~pipelines.embeddings.format.tile_vector_dims`.)

It is incremental: tiles already consolidated are not read again, so a rerun costs what was added.
A tile written over since (re-embedded: ``pipelines.embed.freshness``) is copied again, even when the
run that wrote it stopped before consolidating: the group's ``consolidated_through`` attribute holds,
per time index, the newest record modification time (the storage's clock, from the listings) the last
consolidation saw, and every tile whose record is newer is copied again. (Strictly newer: a later
run's records come seconds after that one, since one run writes a store at a time and it plans and
loads its model before it writes; so even a store whose clock counts whole seconds loses none.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from pipelines.embeddings.format import FORMAT_VERSION, tile_vector_dims
from pipelines.embeddings.grid import ZoneGrid, crs_wkt
from pipelines.embeddings.records import record_times
from pipelines.embeddings.store import (
    _open_group,
    _require_array,
    array_dims,
    read_version,
    require_coord,
    require_time_coord,
    shared_writer,
    version_format,
    version_zones,
    zarr_store,
)
from pipelines.outputs import Lease, geo_convention_attrs

TILES_GROUP = "tiles"


TILE_CHUNK = (256, 128)  # (tile rows, tile cols) per chunk: a UTM zone (1303 x 105 tiles) is 6 chunks


def tile_grid_attrs(grid: ZoneGrid, fmt: int = FORMAT_VERSION) -> dict[str, Any]:
    """Group attributes of the tile grid (proj:/spatial conventions at ``tile_size_m``)."""
    tny, tnx = grid.tile_shape
    s = grid.tile_size_m
    dims = tile_vector_dims(fmt)[2:]
    return {
        **geo_convention_attrs(grid.epsg, [s, 0.0, grid.x0, 0.0, -s, grid.y1], (tny, tnx), dims),
        "long_name": "one pooled vector per tile: L2-normalised mean of the tile's valid unit token vectors",
    }


def ensure_tile_group(
    root_url: str, version_name: str, epsg: int, storage_options: Mapping[str, Any] | None
) -> Any:
    """Create (idempotently) and return the ``tiles`` group of a zone."""
    import pyproj
    import zarr

    version = read_version(root_url, version_name, storage_options)
    fmt = version_format(root_url, version_name, storage_options)
    dims = tile_vector_dims(fmt)
    grid = ZoneGrid(int(epsg), version.token_ground_m, version.tile_size_m)
    store = zarr_store(root_url, storage_options)
    path = f"{version_name}/{int(epsg)}/{TILES_GROUP}"
    try:
        group = zarr.open_group(store=store, path=path, mode="r+", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        group = zarr.open_group(
            store=store, path=path, mode="a", zarr_format=3, attributes=tile_grid_attrs(grid, fmt)
        )
    tny, tnx = grid.tile_shape
    nt = len(version.times)
    s = grid.tile_size_m
    wkt = crs_wkt(int(epsg))
    cf = {k: v for k, v in pyproj.CRS.from_epsg(int(epsg)).to_cf().items() if k != "crs_wkt"}
    gt = " ".join(repr(float(v)) for v in (grid.x0, s, 0.0, grid.y1, 0.0, -s))
    _require_array(
        group,
        "spatial_ref",
        shape=(),
        dtype="int64",
        fill_value=0,
        attributes={**cf, "crs_wkt": wkt, "spatial_ref": wkt, "GeoTransform": gt},
    )
    # the same values as the zone's tile_x/tile_y (ensure_zone), so from format 3 they align in a DataTree
    for name, axis, n, values in (
        (dims[3], "x", tnx, grid.tile_x_coords()),
        (dims[2], "y", tny, grid.tile_y_coords()),
    ):
        require_coord(
            group,
            name,
            values,
            shape=(n,),
            chunks=(n,),
            dtype="float64",
            fill_value=0.0,
            dimension_names=(name,),
            attributes={
                "standard_name": f"projection_{axis}_coordinate",
                "units": "m",
                "long_name": "tile centre",
                **({"axis": axis.upper()} if fmt >= 3 else {}),
            },
        )
    require_time_coord(group, version.times)
    _require_array(
        group,
        "vectors",
        shape=(nt, version.dim, tny, tnx),
        chunks=(1, version.dim, *TILE_CHUNK),
        dtype="float16",
        fill_value=float("nan"),
        dimension_names=dims,
        attributes={"grid_mapping": "spatial_ref", "coordinates": "spatial_ref", "nodata": "NaN"},
    )
    return group


def consolidate_tile_vectors(
    root_url: str,
    version_name: str,
    storage_options: Mapping[str, Any] | None = None,
    rewritten: Mapping[int, Iterable[str]] | None = None,
) -> dict[str, int]:
    """Copy every recorded tile's pooled vector not consolidated yet into the zone's ``tiles`` grid,
    and again those whose record is newer than the last consolidation saw (module docstring) and
    those of ``rewritten`` (time index -> tile ids written over by this run; for grids consolidated
    before ``consolidated_through`` existed).

    One writer at a time: it holds the store's lease (:func:`~pipelines.embeddings.store.shared_writer`;
    the grid's chunks hold many tiles and are read, filled and written back, so two runs at once lost
    each other's vectors). Returns ``{"added": n, "already": m}``.
    """
    with shared_writer(root_url, storage_options) as lease:
        return _consolidate(root_url, version_name, storage_options, rewritten, lease)


def _consolidate(
    root_url: str,
    version_name: str,
    storage_options: Mapping[str, Any] | None,
    rewritten: Mapping[int, Iterable[str]] | None,
    lease: Lease,
) -> dict[str, int]:
    version = read_version(root_url, version_name, storage_options)
    times = record_times(root_url, version_name, None, storage_options)
    done = {ti: sorted(found) for ti, found in times.items() if found}
    added = already = 0
    n = version.tokens_per_tile
    for epsg in version_zones(root_url, version_name, storage_options):
        grid = ZoneGrid(epsg, version.token_ground_m, version.tile_size_m)
        zone = _open_group(root_url, f"{version_name}/{epsg}", storage_options, "r")
        pooled: Any = zone["pooled"]
        band_first = array_dims(pooled)[1] == "dim"
        group = ensure_tile_group(root_url, version_name, epsg, storage_options)
        vectors: Any = group["vectors"]
        through = {str(k): float(v) for k, v in dict(group.attrs.get("consolidated_through") or {}).items()}
        for ti, ids in sorted(done.items()):
            again = set((rewritten or {}).get(ti, ()))
            since = through.get(str(ti))
            cells, redo, newest = [], [], []
            for tid in ids:
                e, ix, iy = (int(p) for p in tid.split("_"))
                if e != epsg:
                    continue
                s = version.tile_size_m
                row0, _, col0, _ = grid.tile_window((ix * s, iy * s, (ix + 1) * s, (iy + 1) * s))
                cells.append((row0 // n, col0 // n))
                redo.append(tid in again or (since is not None and times[ti][tid] > since))
                newest.append(times[ti][tid])
            if not cells:
                continue
            through[str(ti)] = max(newest)
            rows = np.array([c[0] for c in cells])
            cols = np.array([c[1] for c in cells])
            r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            have = np.asarray(vectors[ti, :, r0:r1, c0:c1])  # [dim, h, w]
            todo = np.isnan(have[0, rows - r0, cols - c0]) | np.array(redo)
            already += int((~todo).sum())
            if not todo.any():
                continue
            for r, c in zip(rows[todo].tolist(), cols[todo].tolist()):
                vec = pooled[ti, :, r, c] if band_first else pooled[ti, r, c, :]
                have[:, r - r0, c - c0] = np.asarray(vec)
            lease.check()  # still this run's: a run stalled past the lease's TTL writes no chunk
            vectors[ti, :, r0:r1, c0:c1] = have
            added += int(np.isfinite(have[0, rows[todo] - r0, cols[todo] - c0]).sum())
        group.attrs["consolidated_through"] = through  # after the vectors: a crash copies more next time
    return {"added": added, "already": already}

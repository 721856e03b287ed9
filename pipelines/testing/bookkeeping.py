"""Completion records without pixels, in the production layout, for bookkeeping tests and benchmarks.

Planning and STAC read only completion records (and write items and a collection), so how many object
requests they make can be measured on stores that hold records alone: :func:`cube_record` is what
``aom cubes`` writes to ``<cubes>/_tiles/<tile_id>.json`` (through :func:`pipelines.cubes.tile_record`),
:func:`embedding_record` what :func:`pipelines.embeddings.write_tile` writes to
``<out>/_tiles/<version>/t<i>/<tile_id>.json``. A reader that opens the pixels of such a tile fails:
these stores are for counting bookkeeping requests only.

Deterministic: the records say they were written at :data:`CUBES_WRITTEN` and :data:`EMBEDDINGS_WRITTEN`
(the embeddings a day after the cubes, as after any ordinary run), never at the wall clock, so that a
store whose objects carry these times as their modification times (``benchmarks/bookkeeping_server.py``)
makes every freshness decision the same on every run.
"""

from __future__ import annotations

import math
from typing import Any

from pipelines.cubes import CubeSpec, gsd_label, tile_record
from pipelines.embeddings import FORMAT_VERSION, QUANT_MAX_ABS_ERROR, EmbeddingsVersion, ZoneGrid
from pipelines.runs import TileStatus
from pipelines.tiling import Tile, TileGrid

#: When the cube records of :func:`cube_record` say they were written.
CUBES_WRITTEN = "2026-01-01T00:00:00+00:00"
#: When the embeddings records of :func:`embedding_record` say they were written: after the cubes they
#: were made from, as a run writes them.
EMBEDDINGS_WRITTEN = "2026-01-02T00:00:00+00:00"

#: UTM zones 29N..38N cover continental Europe (9 W .. 48 E).
EUROPE_ZONES = tuple(range(32629, 32639))


def spread_tiles(n: int, grid: TileGrid | None = None, zones: tuple[int, ...] = EUROPE_ZONES) -> list[Tile]:
    """``n`` distinct tiles of ``zones``, row by row northwards from 44 N across all zones (each row
    spans 90 % of the zone's width at that latitude, so every tile lies well inside its zone), so
    listings by ``<epsg>_<ix>_`` column see about as many columns and tiles per column as a continent
    does. Deterministic; fast (no projection per tile)."""
    grid = grid or TileGrid()
    s = grid.tile_size_m
    iy = int(4_880_000 // s)
    out: list[Tile] = []
    while len(out) < n:
        lat = math.radians(min((iy + 1) * s / 111_200.0, 84.0))  # northing -> latitude, roughly
        half = 0.9 * 3.0 * 111_320.0 * math.cos(lat)  # half the zone's width there, less a margin
        for z in zones:
            for ix in range(math.ceil((500_000 - half) / s), math.floor((500_000 + half) / s)):
                out.append(Tile(f"{z}_{ix}_{iy}", z, (ix * s, iy * s, (ix + 1) * s, (iy + 1) * s)))
                if len(out) == n:
                    return out
        iy += 1
    return out


def cube_record(tile: Tile, spec: CubeSpec, times: int = 20) -> dict[str, Any]:
    """A ``complete`` cube completion record holding every group the spec can hold."""
    groups: list[dict[str, Any]] = []
    for coll in spec.collections:
        for label, (gsd, bands) in spec.band_groups(coll).items():
            px = round(spec.grid.tile_size_m / gsd)
            groups.append(
                {
                    "collection": coll,
                    "gsd_label": label,
                    "gsd_m": gsd,
                    "path": f"{tile.tile_id}/{coll}/{label}",
                    "bands": list(bands),
                    "shape": [times, len(bands), px, px],
                    "times": [f"2023-06-{1 + d:02d}T10:30:00" for d in range(times)],
                    "source_items": [f"S2A_{tile.tile_id}_{d}" for d in range(times)],
                    "valid_fraction": [0.9] * times,
                }
            )
    assert all(g["gsd_label"] == gsd_label(g["gsd_m"]) for g in groups)
    return tile_record(
        tile_id=tile.tile_id,
        epsg=tile.epsg,
        bounds=tile.bounds,
        spec=spec,
        status=TileStatus.COMPLETE,
        reason="",
        groups=groups,
        items=sorted({i for g in groups for i in g["source_items"]}),
        written_at=CUBES_WRITTEN,
    )


def considered_items(tile_id: str) -> list[str]:
    """The items a search gave the tile of :func:`embedding_record` (one of them unused)."""
    return [f"S2A_{tile_id}_{d}" for d in range(5)]


def embedding_record(
    version: EmbeddingsVersion, tile: Tile, time_index: int, written: str = EMBEDDINGS_WRITTEN
) -> dict[str, Any]:
    """A ``complete`` embeddings completion record with the keys :func:`write_tile` writes, written
    at ``written`` (:data:`EMBEDDINGS_WRITTEN`: after the cube records of :func:`cube_record`)."""
    grid = ZoneGrid(tile.epsg, version.token_ground_m, version.tile_size_m)
    bounds = [float(b) for b in tile.bounds]
    row0, row1, col0, col1 = grid.tile_window(bounds)
    trow, tcol = grid.tile_index(bounds)
    n = version.tokens_per_tile
    return {
        "format": FORMAT_VERSION,
        "version": version.name,
        "tile_id": tile.tile_id,
        "epsg": tile.epsg,
        "bounds": bounds,
        "time_index": int(time_index),
        "time": version.times[int(time_index)],
        "status": str(TileStatus.COMPLETE),
        "written": written,
        "window": {"row": [row0, row1], "col": [col0, col1], "tile_row": trow, "tile_col": tcol},
        "valid_tokens": n * n,
        "total_tokens": n * n,
        "provenance": {
            "model": version.model,
            "model_version": version.model_version,
            "checkpoint_sha256": version.checkpoint_sha256,
            "input_items": [f"S2A_{tile.tile_id}_{d}" for d in range(4)],
            "considered_items": considered_items(tile.tile_id),
            "bands": [{"name": "B04", "gsd_m": 10.0}],
        },
        "quantisation": {
            "method": version.quantisation,
            "bound_max_abs_error": QUANT_MAX_ABS_ERROR,
            "valid_vectors": n * n,
            "max_abs_error": 0.004,
        },
    }

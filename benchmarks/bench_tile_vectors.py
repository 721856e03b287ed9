"""Benchmark: reading one UTM zone's tile vectors, consolidated grid vs one chunk per tile.

Usage::

    nice -n 10 .venv/bin/python benchmarks/bench_tile_vectors.py                 # dim 64, 5000 per-tile chunks
    nice -n 10 .venv/bin/python benchmarks/bench_tile_vectors.py --dim 128 --per-tile 2000

Both layouts are the ones production writes (``pipelines.embeddings``): workers write
``<zone>/pooled`` one chunk per tile; ``consolidate_tile_vectors`` fills ``<zone>/tiles/vectors``
(chunks of 256 x 128 tiles). The consolidated grid is filled for the *whole* zone (1303 x 105 =
136 815 tiles at 7680 m: the worst case) and read whole with ``pipelines.query.tile_vectors``; the
per-tile layout is written for ``--per-tile`` tiles and read with the same function on a store
without the consolidated grid (one request per tile), and its full-zone cost is that rate times the
zone's tiles (stated as extrapolated). CPU and wall seconds; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _timed(fn: Any) -> tuple[Any, float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--per-tile", type=int, default=5000, help="tiles written one chunk each (baseline)")
    args = p.parse_args()

    import zarr

    from pipelines.embeddings import ZoneGrid, create_version, ensure_tile_group, ensure_zone, write_tile
    from pipelines.query import open_embeddings, tile_vectors
    from pipelines.testing import synthetic_version
    from pipelines.tiling import Tile

    work = Path(tempfile.mkdtemp(prefix="aom-bench-tiles-"))
    try:
        v = synthetic_version(name="aom-bench-000000000000", dim=args.dim, token_ground_m=160.0)
        epsg = 32631
        grid = ZoneGrid(epsg, v.token_ground_m, v.tile_size_m)
        tny, tnx = grid.tile_shape
        rng = np.random.default_rng(0)

        base = str(work / "per-tile")
        create_version(base, v)
        ensure_zone(base, v.name, epsg)
        n = v.tokens_per_tile
        s = v.tile_size_m
        side = int(np.ceil(np.sqrt(args.per_tile)))
        # one real write_tile (completion record, token shard), the rest as production lays them out:
        # a pooled chunk + a completion record per tile, without the token shards (not read here)
        first = Tile(f"{epsg}_13_600", epsg, (13 * s, 600 * s, 14 * s, 601 * s))
        write_tile(
            base,
            v.name,
            first,
            0,
            rng.standard_normal((n, n, args.dim)).astype(np.float32),
            None,
            {"input_items": [], "bands": []},
        )
        from pipelines import storage
        from pipelines.embeddings import read_tile_record, record_url

        rec = read_tile_record(base, v.name, first.tile_id, 0)
        pooled = zarr.open_array(
            store=zarr.storage.LocalStore(base), path=f"{v.name}/{epsg}/pooled", mode="r+"
        )
        ids = [(13 + i % side, 601 + i // side) for i in range(args.per_tile - 1)]
        for ix, iy in ids:
            tile = Tile(f"{epsg}_{ix}_{iy}", epsg, (ix * s, iy * s, (ix + 1) * s, (iy + 1) * s))
            tr, tc = grid.tile_index(tile.bounds)
            pooled[0, :, tr, tc] = rng.standard_normal(args.dim).astype(np.float16)
            storage.write_json_atomic(
                record_url(base, v.name, tile.tile_id, 0), {**rec, "tile_id": tile.tile_id}
            )
        emb = open_embeddings(base)
        emb.tiles(0)  # listing outside the timing
        tv, per_wall, per_cpu = _timed(lambda: tile_vectors(emb, epsg, 0))
        assert not tv.consolidated and int(np.isfinite(tv.vectors[..., 0]).sum()) == args.per_tile

        cons = str(work / "consolidated")
        shutil.copytree(base, cons)
        group = ensure_tile_group(cons, v.name, epsg, None)
        full = rng.standard_normal((args.dim, tny, tnx)).astype(np.float16)
        group["vectors"][0] = full
        emb2 = open_embeddings(cons)
        emb2.tiles(0)
        tv2, con_wall, con_cpu = _timed(lambda: tile_vectors(emb2, epsg, 0))
        assert tv2.consolidated and tv2.vectors.shape == (tny, tnx, args.dim)
        objects = (
            sum(
                1
                for p in (work / "consolidated" / v.name / str(epsg) / "tiles" / "vectors").rglob("*")
                if p.is_file()
            )
            - 1
        )
        zone_tiles = tny * tnx
        per_tile_full_wall = per_wall / args.per_tile * zone_tiles
        out = {
            "benchmark": "tile_vectors",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "params": {"dim": args.dim, "per_tile": args.per_tile, "zone_tiles": zone_tiles},
            "consolidated": {
                "tiles": zone_tiles,
                "objects": objects,
                "wall_s": round(con_wall, 3),
                "cpu_s": round(con_cpu, 3),
            },
            "per_tile": {"tiles": args.per_tile, "wall_s": round(per_wall, 3), "cpu_s": round(per_cpu, 3)},
            "per_tile_zone_wall_s_extrapolated": round(per_tile_full_wall, 1),
            "ratio_cpu_per_tile_consolidated_over_per_tile": round(
                (con_cpu / zone_tiles) / (per_cpu / args.per_tile), 5
            ),
            "zone_read_cpu_under_2s": con_cpu < 2.0,
            "zone_read_wall_under_2s": con_wall < 2.0,
            "load_average_1min": round(os.getloadavg()[0], 1),
        }
        print(json.dumps(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Rebuild benchmark: what building a complete tile's rebuild aside and swapping it in costs
(``pipelines.cubes.rebuild``), against a first build of the same tile from the same items, in the
same run, on local disk and on a local S3 server with injected latency.

Prints human-readable lines, then ONE JSON object on the last line::

    nice -n 10 .venv/bin/python benchmarks/bench_rebuild.py                 # 1 tile of 7680 m, 20 ms
    nice -n 10 .venv/bin/python benchmarks/bench_rebuild.py --tile-m 3840 --latency-ms 50

Inputs: three synthetic Sentinel-2 items (``pipelines.testing.make_item``: COGs of the 12 bands at
10/20/60 m plus SCL, the registry's asset keys and scales) covering one tile of the production grid
(``--tile-m``, default 7680 m: 768 px at 10 m), the store in the production layout ``aom cubes``
writes (``write_cubes``). A and B are two acquisitions, A2 a third one (another solar day).

Measured per backend (``local``: a folder; ``s3``: moto in its own process behind a TCP forwarder
that delays every request by ``--latency-ms``, ``tests/services``):

* **first**: ``write_cubes([A, B, A2])`` into an empty store: the tile written in place (after an
  untimed warm-up build, so that neither measurement pays the process's first reads);
* **rebuild**: a store built from ``[A, B]`` (not timed), then ``write_cubes([A, B, A2])``: the
  tile's record lacks A2, so it is rebuilt under ``_rebuild/`` and swapped in (on S3 one server-side
  copy per object, then a delete).

Both measured runs read, composite and write the same three items; the rebuild adds the check of the
old record, the staging prefix and the swap. Reported: wall seconds, CPU seconds of this process
(``time.process_time``, all threads: per core) and their ratios rebuild / first (best of
``--repeats``), and on S3 the objects of the tile (what the swap copies).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(msg, flush=True)


def items(root: Path, tile_m: float) -> tuple[list[dict[str, Any]], str]:
    """A, B, A2 over tile ``32631_<ix>_<iy>`` of a grid of ``tile_m`` (EPSG:32631, about 6.4E 45N)."""
    from pipelines.testing import make_item
    from pipelines.tiling import TileGrid

    ix, iy = int(698880 // tile_m), int(4984320 // tile_m)
    bounds = (ix * tile_m, iy * tile_m, (ix + 1) * tile_m, (iy + 1) * tile_m)
    a = make_item(root, item_id="A", bounds=bounds, cloud_boxes=[(0.1, 0.55, 0.4, 0.9)])
    b = make_item(root, item_id="B", bounds=bounds, datetime="2023-06-11T10:30:00Z", seed=1)
    a2 = make_item(root, item_id="A2", bounds=bounds, datetime="2023-06-21T10:30:00Z", seed=2)
    tile = TileGrid(tile_m).tile(f"32631_{ix}_{iy}")
    return [a, b, a2], tile.tile_id


def timed(fn: Any) -> tuple[float, float, Any]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def measure(
    backend: str,
    url_of: Callable[[str], str],
    opts: dict[str, Any],
    its: list[dict[str, Any]],
    tile_id: str,
    tile_m: float,
) -> dict[str, Any]:
    from pipelines.cubes import CubeSpec, write_cubes
    from pipelines.runs import TileStatus
    from pipelines.tiling import TileGrid

    spec = CubeSpec(grid=TileGrid(tile_m), collections=("sentinel-2-l2a",))

    def run(url: str, use: list[dict[str, Any]], expect: str) -> tuple[float, float]:
        wall, cpu, summary = timed(lambda: write_cubes(use, [tile_id], spec, url, opts, progress=False))
        (outcome,) = summary.outcomes
        if outcome.status != TileStatus.DONE or expect not in (outcome.reason or "written"):
            raise RuntimeError(f"{backend}: unexpected outcome {outcome}")
        return wall, cpu

    run(url_of("warm-up"), its, "")  # imports, GDAL's and the OS's caches: paid by neither
    run(url_of("rebuild"), its[:2], "")  # the complete tile of A and B (not timed)
    first = run(url_of("first"), its, "")
    rebuild = run(url_of("rebuild"), its, "rebuilt with 1 new item")
    return {"first": first, "rebuild": rebuild}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tile-m", type=float, default=7680.0)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from tests.services.s3 import S3Service

    work = Path(tempfile.mkdtemp(prefix="aom-bench-rebuild-"))
    results: dict[str, Any] = {}
    s3 = S3Service(latency_ms=args.latency_ms).start()
    try:
        t0 = time.perf_counter()
        its, tile_id = items(work / "items", args.tile_m)
        log(f"items A, B, A2 over tile {tile_id} ({args.tile_m:g} m) in {time.perf_counter() - t0:.1f} s")
        fs = s3.filesystem()
        for backend in ("local", "s3"):
            best: dict[str, tuple[float, float]] = {}
            for r in range(args.repeats):
                url_of: Callable[[str], str]
                opts: dict[str, Any]
                if backend == "local":
                    base = work / f"stores-{r}"

                    def local_url(name: str, base: Path = base) -> str:
                        return str(base / name)

                    url_of, opts = local_url, {}
                else:
                    bucket = f"bench-rebuild-{r}"
                    fs.mkdir(bucket)

                    def s3_url(name: str, bucket: str = bucket) -> str:
                        return f"s3://{bucket}/{name}"

                    url_of, opts = s3_url, s3.storage_options
                got = measure(backend, url_of, opts, its, tile_id, args.tile_m)
                for k, v in got.items():
                    if k not in best or v[0] < best[k][0]:
                        best[k] = v
                log(
                    f"{backend} #{r}: first {got['first'][0]:.2f} s wall / {got['first'][1]:.2f} CPU-s, "
                    f"rebuild {got['rebuild'][0]:.2f} s / {got['rebuild'][1]:.2f} CPU-s"
                )
            entry: dict[str, Any] = {
                "first_wall_s": round(best["first"][0], 3),
                "first_cpu_s": round(best["first"][1], 3),
                "rebuild_wall_s": round(best["rebuild"][0], 3),
                "rebuild_cpu_s": round(best["rebuild"][1], 3),
                "rebuild_vs_first_wall": round(best["rebuild"][0] / best["first"][0], 3),
                "rebuild_vs_first_cpu": round(best["rebuild"][1] / best["first"][1], 3),
            }
            if backend == "s3":
                entry["tile_objects"] = len(fs.find(f"bench-rebuild-0/first/{tile_id}"))
            results[backend] = entry
    finally:
        s3.close()
        shutil.rmtree(work, ignore_errors=True)
    out = {
        "benchmark": "bench_rebuild",
        "machine": f"{platform.machine()} {__import__('os').cpu_count()} logical CPUs (shared)",
        "tile_m": args.tile_m,
        "latency_ms": args.latency_ms,
        "items": 3,
        "repeats": args.repeats,
        **results,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

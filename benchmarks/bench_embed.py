"""Embedding benchmark: end-to-end vs model-only throughput, loader rate, per-worker peak RSS on a
full-size Sentinel-2 granule, and FLOPs per km² of ``base`` for the Europe projection.

Prints human-readable lines, then ONE JSON object on the last line::

    .venv/bin/python benchmarks/bench_embed.py                        # defaults (CPU, ~10-20 min on 2 cores)
    .venv/bin/python benchmarks/bench_embed.py --model tiny --no-full-size --no-flops   # quick

What is measured (all on this machine, same run):

The layout is the one ``aom embed`` uses: ``choose_layout`` for 48-token tiles of 160 m tokens and
the S2 GSDs, seam blending by default (3 x 3 chips a tile, tiles read padded by ``pad_m`` = 2.4 km);
``--blend-tokens 0`` for the cores-only layout (2 x 2 chips, padded by the 480 m margin).

1. **end_to_end**: ``run_embedding`` over a 2 x 2 block of 7680 m tiles of a synthetic Sentinel-2 cube
   store (12 bands at 10/20/60 m, ``--acquisitions`` dates, median composite), on a LocalCluster of
   ``--workers`` processes x 1 thread, the cluster warmed up (imports + model) by a first run into
   a throwaway store. chips/s = chips run / wall time of the whole call (planning, reads,
   composites, encoder, quantisation, shard + record writes, STAC), with ``--blend-tokens``.
2. **model_only**: the same chips (same padded pixels, same layout, same batches) through the same
   encoder on the same warm workers, the pixels already in worker memory: wall time of the
   encoder tasks only. ``end_to_end_vs_model`` = end-to-end chips/s / model-only chips/s.
3. **loader**: the cube reader + median composite of those tiles in one process, one thread:
   MB of decoded reflectance (2 bytes per pixel, band and acquisition read) per CPU-second, for
   the shard path (``CubeSource``, each shard fetched and each chunk decoded once) and the former
   xarray path (``decode="xarray"``), and the decode floor (:mod:`decode_floor`: reading exactly
   the shards the shard path touched, decompressing exactly its chunks with blosc, converting the
   pixels it returned), each tile read padded by the layout's ``pad_m`` exactly as ``aom embed``
   reads it: ``embed_read_vs_floor`` = floor CPU-s / shard path CPU-s (which also
   composites), both best of 3 passes (the shard path's first pass is reported too, and
   ``shards_vs_xarray`` compares one pass of each). ``--only-read`` runs just this. Also the COG path (odc-stac assembly from the
   items) when ``--full-size`` data exists.
4. **peak RSS per worker** (``--full-size``): a fresh process = one worker embeds ``--rss-tiles``
   whole 7680 m tiles straight from a 10980 x 10980 px synthetic Sentinel-2 granule (13 COGs,
   all 12 bands) through the streaming catalog path (padded tile assembled in 512 px blocks,
   composite in strips, chips batched through the encoder, shard write). ru_maxrss of that process.
5. **FLOPs** of ``base`` per production chip (24 + 2 x 3 tokens of 160 m = 4.8 km, all 12 S2
   bands) with ``torch.utils.flop_counter``; per km² kept = per chip x chips per tile (9 blended,
   4 cores only) / tile area. ``--only-read --flops`` adds them (and the Europe projection from the
   measured read rate) to the read benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.tiling import DEFAULT_TILE_SIZE_M  # noqa: E402  (after the path insert)

EPSG = 32631
BLOCK = (90, 650)  # lower-left tile (ix, iy) of the 2 x 2 block
TILE_M = DEFAULT_TILE_SIZE_M
MARGIN_M = 480.0  # extent of the synthetic items beyond the tile block (the cubes hold the tiles only)
EUROPE_KM2 = 10.5e6


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------
# Data


def bench_layout(blend_tokens: int | None) -> Any:
    """The ``ChipLayout`` ``aom embed`` uses for these tiles (S2 at 10/20/60 m, the default 160 m
    tokens; ``blend_tokens`` None = the default, seam blending; 0 = cores only)."""
    from aom_model import AOMConfig
    from pipelines.embed import choose_layout

    token_m = AOMConfig().token_ground_m
    return choose_layout(round(TILE_M / token_m), token_m, (10.0, 20.0, 60.0), blend_tokens=blend_tokens)


def block_tiles(n_side: int = 2) -> list[str]:
    ix0, iy0 = BLOCK
    return [f"{EPSG}_{ix0 + i}_{iy0 + j}" for j in range(n_side) for i in range(n_side)]


def make_block_cubes(
    work: Path, acquisitions: int, n_side: int = 2, composite: str = "none"
) -> tuple[Path, Path]:
    """Synthetic S2 items covering the tile block (+ margin) and their cube store (cached);
    ``composite`` as ``aom cubes --composite`` (``median``: one stored median per tile and group)."""
    from pipelines.cubes import CubeSpec, write_cubes
    from pipelines.testing import make_item
    from pipelines.tiling import TileGrid

    suffix = "" if composite == "none" else f"-{composite}"
    cubes = work / f"cubes-{n_side}x{n_side}-t{acquisitions}{suffix}"
    items_path = work / f"items-{n_side}x{n_side}-t{acquisitions}.ndjson"
    if (cubes / "_tiles").is_dir() and items_path.exists():
        return cubes, items_path
    ix0, iy0 = BLOCK
    bounds = (
        ix0 * TILE_M - MARGIN_M,
        iy0 * TILE_M - MARGIN_M,
        (ix0 + n_side) * TILE_M + MARGIN_M,
        (iy0 + n_side) * TILE_M + MARGIN_M,
    )
    if not 1 <= acquisitions <= 30:
        raise ValueError("acquisitions: 1..30 (one a day in June at most)")
    items = []
    for t in range(acquisitions):
        items.append(
            make_item(
                work / "items",
                item_id=f"BENCH_S2_{t}",
                epsg=EPSG,
                bounds=bounds,
                # every acquisition inside June (the read period): 5 days apart up to 6, else daily
                datetime=f"2023-06-{1 + (5 if acquisitions <= 6 else 1) * t:02d}T10:30:00Z",
                cloud_boxes=[(0.1 + 0.2 * t, 0.1, 0.3 + 0.2 * t, 0.4)],
                seed=t,
            )
        )
    items_path.write_text("".join(json.dumps(i) + "\n" for i in items))
    grid = TileGrid(TILE_M)
    spec = CubeSpec(grid=grid, collections=("sentinel-2-l2a",), catalog="sample", composite=composite)
    shutil.rmtree(cubes, ignore_errors=True)
    s = write_cubes(items, [grid.tile(t) for t in block_tiles(n_side)], spec, str(cubes), progress=False)
    if s.tiles_failed:
        raise RuntimeError(s.format())
    return cubes, items_path


def make_checkpoint(path: Path, size: str) -> Path:
    import torch

    from aom_model import AOM, AOMConfig, save_checkpoint

    if not path.exists():
        torch.manual_seed(0)
        save_checkpoint(path, AOM(AOMConfig.named(size)).eval())
    return path


# ------------------------------------------------------------------------------------------
# Model-only task (runs on the workers)


def model_only_task(padded: Any, ctx: Any) -> tuple[int, float]:
    from pipelines.embed import embed_region, load_checkpoint_url
    from pipelines.embed.checkpoint import _resolve_device
    from pipelines.embed.tasks import _set_threads

    device = _resolve_device(ctx.device)
    ckpt = load_checkpoint_url(ctx.checkpoint, ctx.input_options, ctx.checkpoint_sha256, device)
    _set_threads(ctx.threads)
    t0 = time.perf_counter()
    res = embed_region(
        ckpt.model, padded.groups, ctx.layout, ctx.normaliser, batch_size=ctx.batch_size, device=device
    )
    return res.chips_run, time.perf_counter() - t0


def bench_throughput(
    args: argparse.Namespace, work: Path, ckpt: Path, cubes: Path, layout: Any
) -> dict[str, Any]:
    from distributed import Client, LocalCluster, wait

    from pipelines.embed import CubeSource, EmbedRequest, plan_run, run_embedding

    tiles = block_tiles(2)
    period = "2023-06-01/2023-06-30"

    def req(out: Path, tile_ids: list[str], address: str) -> EmbedRequest:
        return EmbedRequest(
            checkpoint=str(ckpt),
            out=str(out),
            datetime=period,
            tiles=tuple(tile_ids),
            cubes=str(cubes),
            dask_address=address,
            gpu_resource="encoder",  # one encoder call per worker at a time; the other thread reads ahead
            torch_threads=1,
            batch_size=args.batch_size,
            blend_tokens=args.blend_tokens,
            progress=False,
        )

    out: dict[str, Any] = {}
    with (
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            processes=True,
            dashboard_address=":0",
            resources={"encoder": 1},
        ) as lc,
        Client(lc) as client,
    ):
        from pipelines.embed import load_checkpoint_url

        client.run(load_checkpoint_url, str(ckpt))  # imports + model on every worker, cached there
        warm = work / "run-warm"
        shutil.rmtree(warm, ignore_errors=True)
        run_embedding(req(warm, tiles[:2], lc.scheduler_address))  # warm reader / writer paths

        e2e_out = work / "run-e2e"
        shutil.rmtree(e2e_out, ignore_errors=True)
        t0 = time.perf_counter()
        s = run_embedding(req(e2e_out, tiles, lc.scheduler_address))
        e2e_s = time.perf_counter() - t0
        if not s.complete or s.done != len(tiles):
            raise RuntimeError(s.format())
        chips = s.chips
        out["end_to_end"] = {
            "tiles": len(tiles),
            "chips": chips,
            "wall_s": round(e2e_s, 3),
            "chips_per_s": round(chips / e2e_s, 4),
            "km2_per_hour": round(len(tiles) * TILE_M**2 / 1e6 * 3600 / e2e_s, 2),
            "read_s": round(sum(r.read_s for r in s.results), 3),
            "model_s": round(sum(r.model_s for r in s.results), 3),
            "write_s": round(sum(r.write_s for r in s.results), 3),
        }
        log(f"end-to-end: {chips} chips of {len(tiles)} tiles in {e2e_s:.1f} s = {chips / e2e_s:.3f} chips/s")

        # model only: the same padded pixels, already on the workers
        plan = plan_run(req(work / "unused", tiles, lc.scheduler_address))
        ctx = plan.context
        if plan.layout != layout:  # the loader and FLOP figures use ``layout``: they must be the run's
            raise RuntimeError(f"aom embed chose {plan.layout}, the benchmark assumed {layout}")
        src = CubeSource(str(cubes))
        padded = [src.read(plan.grid.tile(t), plan.periods[0], 0, plan.layout.pad_m) for t in tiles]
        futs = client.scatter(padded)
        wait(futs)
        t0 = time.perf_counter()
        jobs = [client.submit(model_only_task, f, ctx, pure=False, resources={"encoder": 1}) for f in futs]
        res = client.gather(jobs)
        mo_s = time.perf_counter() - t0
        mo_chips = sum(r[0] for r in res)
        out["model_only"] = {
            "chips": mo_chips,
            "wall_s": round(mo_s, 3),
            "chips_per_s": round(mo_chips / mo_s, 4),
            "encoder_s_per_chip": round(sum(r[1] for r in res) / max(1, mo_chips), 4),
        }
        log(f"model-only: {mo_chips} chips in {mo_s:.1f} s = {mo_chips / mo_s:.3f} chips/s")
    out["end_to_end_vs_model"] = round(out["end_to_end"]["chips_per_s"] / out["model_only"]["chips_per_s"], 4)
    return out


# ------------------------------------------------------------------------------------------
# Loader rate (one process, one thread, CPU time)


@contextlib.contextmanager
def recording_raw_groups() -> Iterator[list[Any]]:
    """Every ``RawGroup`` that ``CubeStore.open_raw`` returns while inside: what the shard path read
    and decoded (``counts``), the decode floor's input."""
    from pipelines.cubes import CubeStore

    opened: list[Any] = []
    open_raw = CubeStore.open_raw

    def recording(self: CubeStore, *a: Any) -> Any:
        rg = open_raw(self, *a)
        opened.append(rg)
        return rg

    CubeStore.open_raw = recording  # type: ignore[method-assign,assignment]  # restored below
    try:
        yield opened
    finally:
        CubeStore.open_raw = open_raw  # type: ignore[method-assign]  # the original back


def bench_loader(cubes: Path, full_item: Path | None, layout: Any, xarray: bool = True) -> dict[str, Any]:
    import torch
    from decode_floor import collect_chunks, floor_cpu_s

    from pipelines.embed import CatalogSource, CubeSource, parse_periods
    from pipelines.tiling import TileGrid

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    grid = TileGrid(TILE_M)
    period = parse_periods("2023-06-01/2023-06-30")[0]
    pad_m = layout.pad_m  # what ``aom embed`` reads around each tile with this layout
    out: dict[str, Any] = {"cubes": {}, "pad_m": pad_m}
    with recording_raw_groups() as opened:  # count what the shard path reads
        # the shard path: best of ``repeats`` passes over the 4 tiles (a fresh source each; every
        # record, group and shard read again), as the floor is best of 3; the xarray path once
        for decode, repeats in ((("xarray", 1),) if xarray else ()) + (("shards", 3),):
            passes = []
            for _ in range(repeats):
                opened.clear()  # the floor's input: what one pass read
                src = CubeSource(str(cubes), decode=decode)
                mb = 0.0
                c0, w0 = time.process_time(), time.perf_counter()
                for t in block_tiles(2):
                    p = src.read(grid.tile(t), period, 0, pad_m)
                    mb += (
                        sum(g.pixels.size * 2 * max(1, p.observations.get(g.label, 1)) for g in p.groups)
                        / 1e6
                    )
                passes.append((time.process_time() - c0, time.perf_counter() - w0))
            cpu, wall = min(passes)
            out["cubes"][decode] = {
                "mb_decoded": round(mb, 1),
                "cpu_s": round(cpu, 3),
                "wall_s": round(wall, 2),
                "mb_per_cpu_s": round(mb / cpu, 2),
            }
            if repeats > 1:
                out["cubes"][decode]["cpu_s_passes"] = [round(c, 3) for c, _ in passes]
            log(f"loader (cubes, {decode}): {mb:.0f} MB in {cpu:.2f} CPU-s = {mb / cpu:.1f} MB/s per core")
    chunks = collect_chunks(opened)
    used = sum(g.counts.pixels for g in opened)
    floor = floor_cpu_s(chunks, used, repeats=3)
    read_cpu = out["cubes"]["shards"]["cpu_s"]
    first = out["cubes"]["shards"]["cpu_s_passes"][0]
    out["floor"] = {
        "shards": len({p for p, _, _ in chunks}),
        "chunks": len(chunks),
        "pixels_used": used,
        "cpu_s": round(floor, 3),
    }
    # ``mb_decoded`` counts the whole padded window, also where no neighbour cube exists (NaN: the
    # 2 x 2 block has no ring of neighbours); ``mb_read`` only the pixels read from the store (the
    # floor's input), which is what a tile inside a region reads everywhere: the rate to project with
    sh = out["cubes"]["shards"]
    sh["mb_read"] = round(used * 2 / 1e6, 1)
    sh["mb_read_per_cpu_s"] = round(used * 2 / 1e6 / read_cpu, 2)
    out["embed_read_vs_floor"] = round(floor / read_cpu, 3)
    out["embed_read_vs_floor_first_pass"] = round(floor / first, 3)
    if xarray:
        out["shards_vs_xarray"] = round(out["cubes"]["xarray"]["cpu_s"] / first, 2)  # one pass each
    log(f"decode floor: {floor:.3f} CPU-s -> embed_read_vs_floor {out['embed_read_vs_floor']}")
    if full_item is not None and full_item.exists():
        item = json.loads(full_item.read_text())
        cat = CatalogSource(str(full_item), "sample", ("sentinel-2-l2a",))
        tile = grid.tile(f"{EPSG}_{82}_{652}")
        c0, w0 = time.process_time(), time.perf_counter()
        p = cat.read(tile, parse_periods("2023-06-01/2023-06-30")[0], 0, pad_m, [item])
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        mb = sum(g.pixels.size * 2 for g in p.groups) / 1e6
        out["cogs"] = {
            "mb_decoded": round(mb, 1),
            "cpu_s": round(cpu, 2),
            "wall_s": round(wall, 2),
            "mb_per_cpu_s": round(mb / cpu, 2),
        }
        log(
            f"loader (COGs via odc-stac, 1 acquisition): {mb:.0f} MB in {cpu:.1f} CPU-s = {mb / cpu:.1f} MB/s per core"
        )
    return out


ROUNDS = 5


def bench_block_read(
    work: Path, layout: Any, acquisitions: int, side: int, composite: str = "none"
) -> dict[str, Any]:
    """CPU per km² kept of reading a side x side square of tiles inside a region: each tile alone
    (``CubeSource.read``, its own padded window, as one tile per task reads) vs the square at once
    (``CubeSource.read_block``, as a unit of side² tiles reads), best of ``ROUNDS`` interleaved
    passes each, one thread,
    from a (side + 2)² store so that every tile of the square has its full ring of neighbours; and
    the decode floor of the block read (its shards, its chunks, its pixels)."""
    import torch
    from decode_floor import collect_chunks, floor_cpu_s

    from pipelines.embed import CubeSource, parse_periods
    from pipelines.tiling import TileGrid

    torch.set_num_threads(1)
    cubes, _ = make_block_cubes(work, acquisitions, n_side=side + 2, composite=composite)
    grid = TileGrid(TILE_M)
    period = parse_periods("2023-06-01/2023-06-30")[0]
    ix0, iy0 = BLOCK
    tiles = [grid.tile(f"{EPSG}_{ix0 + 1 + i}_{iy0 + 1 + j}") for j in range(side) for i in range(side)]
    km2 = len(tiles) * (TILE_M / 1000.0) ** 2

    def alone(src: CubeSource) -> list[Any]:
        return [src.read(t, period, 0, layout.pad_m) for t in tiles]

    def block(src: CubeSource) -> list[Any]:
        return src.read_block(tiles, period, 0, layout.pad_m)

    out: dict[str, Any] = {
        "store": f"{side + 2}x{side + 2} tiles of {TILE_M:g} m, {acquisitions} acquisition(s), "
        f"composite {composite} (aom cubes --composite)",
        "tiles_kept": len(tiles),
        "km2_kept": round(km2, 2),
        "pad_m": layout.pad_m,
    }
    passes: dict[str, list[float]] = {"alone": [], "block": []}
    counts: dict[str, tuple[int, int]] = {}
    with recording_raw_groups() as opened:
        for _ in range(ROUNDS):  # interleaved rounds (the machine's speed drifts), a fresh source each
            for name, read in (("alone", alone), ("block", block)):
                opened.clear()
                src = CubeSource(str(cubes))
                c0 = time.process_time()
                got = read(src)
                passes[name].append(time.process_time() - c0)
                assert all(p.status == "done" for p in got), [p.reason for p in got]
                counts[name] = (
                    sum(g.counts.pixels for g in opened),
                    sum(g.counts.chunks_decoded for g in opened),
                )
                del got
    for name, cpu in passes.items():
        out[name] = {
            "cpu_s": round(min(cpu), 3),
            "cpu_s_passes": [round(c, 3) for c in cpu],
            "cpu_s_per_km2": min(cpu) / km2,
            "mb_read": round(counts[name][0] * 2 / 1e6, 1),
            "chunks_decoded": counts[name][1],
        }
        log(
            f"block read ({name}, {len(tiles)} tiles, {acquisitions} acq.): best {min(cpu):.3f} CPU-s = "
            f"{min(cpu) / km2 * 1e3:.3f} CPU-ms per km² kept, {out[name]['mb_read']} MB read"
        )
    chunks = collect_chunks(opened)  # the last block pass
    floor = floor_cpu_s(chunks, sum(g.counts.pixels for g in opened), repeats=3)
    out["floor_cpu_s"] = round(floor, 3)
    out["block_vs_alone"] = round(out["alone"]["cpu_s"] / out["block"]["cpu_s"], 3)
    out["block_read_vs_floor"] = round(floor / out["block"]["cpu_s"], 3)
    log(
        f"block read: block_vs_alone {out['block_vs_alone']}, block_read_vs_floor {out['block_read_vs_floor']}"
    )
    return out


def block_cores_per_h100(block: dict[str, Any], flops: dict[str, Any]) -> dict[str, float]:
    """CPU cores that keep one H100 fed, from the measured CPU per km² kept and ``base``'s FLOPs per km²."""
    km2_s = flops["gpu_tflops_assumed"] * 1e12 / flops["flops_per_km2"]
    return {
        "km2_per_s_per_h100": round(km2_s, 1),
        "cores_per_h100_alone": round(km2_s * block["alone"]["cpu_s_per_km2"], 2),
        "cores_per_h100_block": round(km2_s * block["block"]["cpu_s_per_km2"], 2),
    }


# ------------------------------------------------------------------------------------------
# Peak RSS of one worker on a full-size granule


def make_full_item(work: Path) -> Path:
    from pipelines.testing import make_item

    path = work / "full" / "item.json"
    if path.exists():
        return path
    t0 = time.perf_counter()
    item = make_item(
        work / "full",
        item_id="FULL_S2",
        epsg=EPSG,
        bounds=(600000.0, 4990200.0, 709800.0, 5100000.0),  # 10980 x 10980 px at 10 m (a T31 granule's size)
        datetime="2023-06-10T10:30:00Z",
        seed=3,
    )
    path.write_text(json.dumps(item))
    log(f"full-size granule written in {time.perf_counter() - t0:.0f} s")
    return path


RSS_CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})

def hwm():  # peak RSS of this process since exec (ru_maxrss would include the parent's peak at fork)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

import torch
torch.set_num_threads(1)
from pipelines.embed import EmbedRequest, run_embedding
base = hwm()
t0 = time.perf_counter()
s = run_embedding(EmbedRequest(checkpoint={ckpt!r}, out={out!r}, datetime="2023-06-01/2023-06-30",
    tiles={tiles!r}, catalog_url={item!r}, collections=("sentinel-2-l2a",), workers=0, progress=False,
    batch_size={batch}, blend_tokens={blend!r}))
d = s.to_dict()
print(json.dumps({{"peak_rss_mb": hwm(),
    "rss_after_imports_mb": base, "wall_s": time.perf_counter() - t0, "done": d["done"],
    "chips": d["chips"], "read_s": d["read_s"], "model_s": d["model_s"], "write_s": d["write_s"]}}))
"""


def bench_rss(
    work: Path, ckpt: Path, full_item: Path, n_tiles: int, batch: int, blend: int | None
) -> dict[str, Any]:
    tiles = tuple(f"{EPSG}_{ix}_652" for ix in range(82, 82 + n_tiles))  # whole tiles inside the granule
    out = work / "run-rss"
    shutil.rmtree(out, ignore_errors=True)
    # the NDJSON the search reads: one line, the granule's item
    nd = work / "full" / "items.ndjson"
    nd.write_text(full_item.read_text().replace("\n", "") + "\n")
    code = RSS_CHILD.format(
        root=str(ROOT), ckpt=str(ckpt), out=str(out), tiles=tiles, item=str(nd), batch=batch, blend=blend
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    d = json.loads(res.stdout.strip().splitlines()[-1])
    d["tiles"] = list(tiles)
    log(
        f"peak RSS of one worker embedding {n_tiles} whole 7680 m tiles from a 10980 x 10980 px S2 granule "
        f"(12 bands, COGs, streaming path): {d['peak_rss_mb']:.0f} MB (after imports: {d['rss_after_imports_mb']:.0f} MB)"
    )
    return d


# ------------------------------------------------------------------------------------------
# FLOPs of base at the production chip


def _register_cpu_sdpa_flops() -> None:
    import torch
    from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_flop_count

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op in flop_registry:
        return

    @register_flop_formula(op, get_raw=True)
    def _cpu_flash_flops(query: Any, key: Any, value: Any, *args: Any, out_val: Any = None, **kw: Any) -> int:
        return int(sdpa_flop_count(query.shape, key.shape, value.shape))


def bench_flops(size: str, gpu_tflops: float, layout: Any) -> dict[str, Any]:
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from aom_model import AOM, AOMConfig
    from pipelines.embed import GroupPixels, chip_plan, make_batch
    from pipelines.registry import load_registry

    _register_cpu_sdpa_flops()
    cfg = AOMConfig.named(size)
    model = AOM(cfg).eval()
    s2 = load_registry().sensor("sentinel-2-msi")
    if cfg.token_ground_m != layout.token_m:
        raise ValueError(f"{size}: {cfg.token_ground_m:g} m tokens, the layout has {layout.token_m:g} m")
    chip = layout.chip_tokens
    groups = []
    for gsd in (10.0, 20.0, 60.0):
        bands = tuple(b for b in s2.bands if b.gsd_m == gsd)
        n = round(chip * cfg.token_ground_m / gsd)
        groups.append(
            GroupPixels(
                "sentinel-2-l2a",
                gsd,
                bands,
                np.random.default_rng(0).random((len(bands), n, n), dtype=np.float32),
            )
        )
    plan = chip_plan(cfg, [g.gsd_m for g in groups], chip, cfg.token_ground_m)
    batch = make_batch([[g.pixels for g in groups]], groups)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        t0 = time.perf_counter()
        model.forward_features(batch, plan)
        cpu_s = time.perf_counter() - t0
    flops = float(fc.get_total_flops())
    chips_per_tile = layout.chips_per_side**2
    tile_km2 = (TILE_M / 1000.0) ** 2
    per_km2 = flops * chips_per_tile / tile_km2  # every chip a tile runs, over the area it keeps
    out = {
        "model": size,
        "chip_tokens": chip,
        "core_tokens": layout.core_tokens,
        "blend_tokens": layout.blend_tokens,
        "chips_per_tile": chips_per_tile,
        "token_ground_m": cfg.token_ground_m,
        "bands": 12,
        "flops_per_chip": flops,
        "tile_km2": tile_km2,
        "flops_per_km2": per_km2,
        "cpu_forward_s": round(cpu_s, 2),
        "gpu_tflops_assumed": gpu_tflops,
        "gpu_hours_europe_1gpu": EUROPE_KM2 * per_km2 / (gpu_tflops * 1e12) / 3600.0,
    }
    log(
        f"FLOPs ({size}, chip {chip} tokens = {chip * cfg.token_ground_m / 1000:.1f} km, 12 bands): "
        f"{flops / 1e12:.3f} TFLOP per chip x {chips_per_tile} chips per tile = {per_km2 / 1e9:.1f} GFLOP per km² kept; "
        f"Europe on 1 GPU at {gpu_tflops:.0f} TFLOP/s: {out['gpu_hours_europe_1gpu']:.1f} h"
    )
    return out


def projection(
    flops: dict[str, Any], loader: dict[str, Any], acquisitions: int, layout: Any, side: int = 1
) -> list[dict[str, Any]]:
    """Hours for Europe on N GPUs, and the CPU cores that decoding the inputs needs to keep up.

    Input per km² kept: 12 S2 bands (4 x 10 m, 6 x 20 m, 2 x 60 m), 2 bytes a pixel, times the padded
    area of a ``side`` x ``side`` square of tiles read as one block (``layout.pad_m`` each side; ``side`` 1 =
    tile by tile); ``composite`` = one ready composite (1 image), ``from_n`` = compositing ``acquisitions``
    images on the fly. Loader rate: the COG path (odc-stac decode + mask + median) when measured, else
    the cube shard path per MB read from the store (``mb_read_per_cpu_s``).
    """
    per_km2 = flops["flops_per_km2"]
    rate = (
        loader["cogs"]["mb_per_cpu_s"] if "cogs" in loader else loader["cubes"]["shards"]["mb_read_per_cpu_s"]
    )
    px_km2 = 4 * 1e4 + 6 * 2500 + 2 * 1e6 / 3600
    pad = ((side * TILE_M + 2 * layout.pad_m) / (side * TILE_M)) ** 2
    mb_per_km2 = px_km2 * 2 * pad / 1e6
    rows = []
    for n in (1, 8, 64, 256):
        km2_s = n * flops["gpu_tflops_assumed"] * 1e12 / per_km2
        rows.append(
            {
                "gpus": n,
                "hours": EUROPE_KM2 / km2_s / 3600.0,
                "km2_per_s": round(km2_s, 1),
                "mb_per_km2": round(mb_per_km2, 4),
                "cpu_cores_io_composite": round(km2_s * mb_per_km2 / rate, 1),
                f"cpu_cores_io_from_{acquisitions}": round(km2_s * mb_per_km2 * acquisitions / rate, 1),
            }
        )
    return rows


# ------------------------------------------------------------------------------------------


def add_flops(result: dict[str, Any], args: argparse.Namespace, layout: Any) -> None:
    """FLOPs of ``--flops-model`` per km² kept with ``layout`` and the Europe projection."""
    result["flops"] = bench_flops(args.flops_model, args.gpu_tflops, layout)
    if "block_read" in result:
        result["block_read"].update(block_cores_per_h100(result["block_read"], result["flops"]))
        result["cores_per_h100_embed"] = result["block_read"]["cores_per_h100_block"]
        log(
            f"cores per H100 ({args.flops_model}, {args.block_acquisitions} acquisition(s), composite "
            f"{args.block_composite}): "
            f"{result['block_read']['cores_per_h100_alone']} reading each tile alone, "
            f"{result['cores_per_h100_embed']} reading {args.block_side} x {args.block_side} blocks"
        )
    k = args.composite_acquisitions
    result["europe_projection"] = {
        "km2": EUROPE_KM2,
        "composite_acquisitions": k,
        "read_rate": "cogs" if "cogs" in result["loader"] else "cubes (shard path)",
        "block_side": max(1, args.block_side),
        "rows": projection(result["flops"], result["loader"], k, layout, max(1, args.block_side)),
    }
    for row in result["europe_projection"]["rows"]:
        log(
            f"  Europe, {row['gpus']:>3} x H100 ({args.gpu_tflops:.0f} TFLOP/s): {row['hours'] * 60:8.2f} min of "
            f"encoder; decoding needs {row['cpu_cores_io_composite']:.0f} CPU cores (a ready composite) or "
            f"{row[f'cpu_cores_io_from_{k}']:.0f} (median of {k} acquisitions)"
        )


def add_block_read(result: dict[str, Any], args: argparse.Namespace, work: Path, layout: Any) -> None:
    if args.block_side > 0:
        result["block_read"] = bench_block_read(
            work, layout, args.block_acquisitions, args.block_side, args.block_composite
        )
        result["block_vs_alone"] = result["block_read"]["block_vs_alone"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "aom-bench-embed"))
    ap.add_argument("--model", default="small", help="model for the throughput runs (random weights)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads-per-worker", type=int, default=2, help="1 encoder slot + readers")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--acquisitions", type=int, default=2)
    ap.add_argument(
        "--blend-tokens",
        type=int,
        default=None,
        help="chip layout as `aom embed --blend-tokens` (default: aom embed's default, seam blending; 0: cores only)",
    )
    ap.add_argument("--full-size", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--rss-tiles", type=int, default=2)
    ap.add_argument("--rss-model", default="tiny")
    ap.add_argument(
        "--flops",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="FLOPs + Europe projection (default: on, off with --only-read)",
    )
    ap.add_argument("--flops-model", default="base")
    ap.add_argument("--gpu-tflops", type=float, default=400.0)
    ap.add_argument(
        "--composite-acquisitions", type=int, default=12, help="acquisitions per composite in the projection"
    )
    ap.add_argument(
        "--only-read",
        action="store_true",
        help="only the cube read benchmark (embed_read_vs_floor): no cluster, no COGs, FLOPs only with --flops",
    )
    ap.add_argument(
        "--block-side",
        type=int,
        default=3,
        help="read a side x side square of tiles inside a region alone vs as one block (0: skip)",
    )
    ap.add_argument(
        "--block-acquisitions",
        type=int,
        default=2,
        help="acquisitions the block-read store is built from",
    )
    ap.add_argument(
        "--block-composite",
        default="median",
        choices=("none", "median"),
        help="the block-read store as `aom cubes --composite` writes it (median: one stored median)",
    )
    ap.add_argument(
        "--xarray",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the former xarray read path (slow; shards_vs_xarray)",
    )
    args = ap.parse_args()
    try:
        layout = bench_layout(args.blend_tokens)
    except ValueError as e:  # EmbedConfigError: a blend width the layout refuses
        ap.exit(2, f"bench_embed.py: --blend-tokens {args.blend_tokens}: {e}\n")
    flops = args.flops if args.flops is not None else not args.only_read
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    log(f"machine: {os.cpu_count()} CPU cores; work dir {work}; layout {json.dumps(layout.to_dict())}")
    cubes, _ = make_block_cubes(work, args.acquisitions)
    if args.only_read:
        result: dict[str, Any] = {
            "benchmark": "bench_embed",
            "only": "read",
            "cubes": f"aom cubes layout (write_cubes): 2x2 tiles of 7680 m, Sentinel-2 12 bands, "
            f"{args.acquisitions} acquisitions; 4 padded tiles ({layout.pad_m:g} m pad) read",
            "layout": layout.to_dict(),
            "loader": bench_loader(cubes, None, layout, args.xarray),
        }
        result["embed_read_vs_floor"] = result["loader"]["embed_read_vs_floor"]
        add_block_read(result, args, work, layout)
        if flops:
            add_flops(result, args, layout)
        print(json.dumps(result, sort_keys=True))
        return
    ckpt = make_checkpoint(work / f"{args.model}.safetensors", args.model)
    result = {
        "benchmark": "bench_embed",
        "model": args.model,
        "workers": args.workers,
        "threads_per_worker": args.threads_per_worker,
        "torch_threads": 1,
        "layout": layout.to_dict(),
    }
    result.update(bench_throughput(args, work, ckpt, cubes, layout))
    log(f"end_to_end_vs_model = {result['end_to_end_vs_model']:.3f} (goal >= 0.8)")
    full = make_full_item(work) if args.full_size else None
    result["loader"] = bench_loader(cubes, full, layout, args.xarray)
    result["embed_read_vs_floor"] = result["loader"]["embed_read_vs_floor"]
    if full is not None:
        rss_ckpt = make_checkpoint(work / f"{args.rss_model}.safetensors", args.rss_model)
        result["peak_rss_worker"] = {
            "model": args.rss_model,
            **bench_rss(work, rss_ckpt, full, args.rss_tiles, args.batch_size, args.blend_tokens),
        }
    add_block_read(result, args, work, layout)
    if flops:
        add_flops(result, args, layout)
    result["peak_rss_bench_process_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["elapsed_s"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()

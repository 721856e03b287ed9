"""Benchmark: exact top-k cosine search, Dask-chunked vs plain numpy brute force, plus an IVF probe.

Usage::

    .venv/bin/python benchmarks/bench_similarity.py                       # N = 3e6 int8 vectors, dim 64
    .venv/bin/python benchmarks/bench_similarity.py --n 1000000 --dim 128 --store-n 0

Parts (all data synthetic: 8 class centroids + noise, int8-sqrt codes, seeded):

* ``memory``: ``pipelines.query.similarity.topk_cosine`` over a Dask array of the codes (row
  chunks of ``--chunk``), against a plain numpy brute force over the same codes in the same run
  (decode everything with the same table, one matrix product, argpartition). Results must match.
* ``store``: ``pipelines.query.similar`` over a real zone store of ``--store-n`` vectors written
  with ``write_tile`` (Zarr v3 shards, zstd): includes listing, reading and decompression. Run for
  the band-first format 2 ``(time, dim, y, x)`` and the old format 1 ``(time, y, x, dim)`` on the same
  vectors in the same run: ``layout.search_cpu_ratio_f2_over_f1`` is what band-first costs the search
  (the reader transposes each window to ``[tokens, dim]``). The same search with
  ``metric="whitened"`` (sampling 16 tiles, fitting, exact decode and projection per block):
  ``metric.search_cpu_ratio_whitened_over_cosine``. The same vectors in a ``float16`` version
  (``aom embed --quantisation float16``): ``quantisation.*_ratio_float16_over_int8`` (search CPU for
  both metrics, bytes on disk).
* ``ivf``: an inverted-file index (k-means coarse quantiser, ``--nlist`` lists, ``--nprobe``
  probed) built on the same codes, scored for recall@k against the exact answer, with its build
  time and the number of queries after which it would pay off. It is evaluated here, not shipped.

Extrapolation: minutes per 10^8 vectors = seconds / N * 1e8 / 60 (search is linear in N).
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
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


def numpy_topk(codes: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain brute force over the whole array at once: decode (``q * |q|``, the same arithmetic as the
    Dask kernel; the 1/127**2 scale cancels in a cosine), one matmul, argpartition."""
    from pipelines.embeddings import NODATA_Q

    v = codes.astype(np.float32)
    v *= np.abs(v)
    valid = codes[:, 0] != NODATA_Q
    s = (v @ q) / np.sqrt(np.einsum("ij,ij->i", v, v))
    s[~valid] = -np.inf
    top = np.argpartition(-s, k - 1)[:k]
    top = top[np.lexsort((top, -s[top]))]
    return s[top], top


def bench_memory(args: argparse.Namespace, codes: np.ndarray, q: np.ndarray) -> dict[str, Any]:
    import dask.array as da

    from pipelines.query.similarity import topk_cosine

    n = codes.shape[0]
    arr = da.from_array(codes, chunks=(args.chunk, codes.shape[1]))
    topk_cosine(arr[: 2 * args.chunk], q, args.k, scheduler="threads")  # warm-up: thread pool, imports
    t0 = time.perf_counter()
    s_d, i_d = topk_cosine(arr, q, args.k, scheduler="threads")
    t_dask = time.perf_counter() - t0
    t0 = time.perf_counter()
    s_n, i_n = numpy_topk(codes, q, args.k)
    t_np = time.perf_counter() - t0
    same = bool(np.allclose(s_d[0], s_n, atol=1e-5) and set(i_d[0].tolist()) == set(i_n.tolist()))
    return {
        "n": n,
        "dask_s": round(t_dask, 3),
        "numpy_s": round(t_np, 3),
        "ratio_dask_over_numpy": round(t_dask / t_np, 3),
        "dask_vectors_per_s": round(n / t_dask),
        "dask_min_per_1e8": round(t_dask / n * 1e8 / 60, 2),
        "numpy_peak_decoded_gb": round(n * codes.shape[1] * 4 / 1e9, 2),
        "results_equal": same,
    }


def bench_store(
    args: argparse.Namespace, workdir: Path, fmt: int = 2, quantisation: str = "int8-sqrt"
) -> dict[str, Any]:
    from pipelines.embeddings import create_version, ensure_zone, write_tile
    from pipelines.query import open_embeddings, similar
    from pipelines.testing import synthetic_version
    from pipelines.tiling import Tile

    version = synthetic_version(
        name="aom-bench-000000000000", dim=args.dim, token_ground_m=80.0, quantisation=quantisation
    )
    root = str(workdir / f"store-f{fmt}-{quantisation}")
    create_version(root, version, fmt=fmt)
    ensure_zone(root, version.name, 32631)
    nt = version.tokens_per_tile
    n_tiles = max(1, math.ceil(args.store_n / (nt * nt)))
    side = math.ceil(math.sqrt(n_tiles))
    rng = np.random.default_rng(1)
    c = rng.standard_normal((8, args.dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    t0 = time.perf_counter()
    for i in range(n_tiles):
        ix, iy = 60 + i % side, 600 + i // side
        s = version.tile_size_m
        tile = Tile(f"32631_{ix}_{iy}", 32631, (ix * s, iy * s, (ix + 1) * s, (iy + 1) * s))
        cls = rng.integers(0, 8, (nt, nt))
        vecs = c[cls] + rng.standard_normal((nt, nt, args.dim)).astype(np.float32) * (
            0.35 / math.sqrt(args.dim)
        )
        write_tile(root, version.name, tile, 0, vecs, None, {"input_items": [], "bands": []})
    t_write = time.perf_counter() - t0
    emb = open_embeddings(root)
    q = rng.standard_normal(args.dim).astype(np.float32)
    t0 = time.perf_counter()
    similar(emb, vectors=q, k=args.k, scheduler="synchronous")  # warm-up: imports, listings
    c0, t0 = time.process_time(), time.perf_counter()
    res = similar(emb, vectors=q, k=args.k, scheduler="synchronous")
    t_search, c_search = time.perf_counter() - t0, time.process_time() - c0
    c0 = time.process_time()  # the same search, whitened: sampling + fit + exact decode + projection
    whitened = similar(emb, vectors=q, k=args.k, scheduler="synchronous", metric="whitened")
    c_whitened = time.process_time() - c0
    size = sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())
    return {
        "format": fmt,
        "quantisation": quantisation,
        "search_cpu_s": round(c_search, 3),
        "whitened_search_cpu_s": round(c_whitened, 3),
        "whitened_n": whitened.searched_vectors,
        "top_scores": [round(float(x), 6) for x in res.scores],
        "n": res.searched_vectors,
        "tiles": n_tiles,
        "write_s": round(t_write, 2),
        "search_s": round(t_search, 3),
        "vectors_per_s": round(res.searched_vectors / t_search),
        "min_per_1e8": round(t_search / res.searched_vectors * 1e8 / 60, 2),
        "store_bytes_per_vector": round(size / res.searched_vectors, 1),
    }


def bench_ivf(
    args: argparse.Namespace, codes: np.ndarray, queries: np.ndarray, exact_s: float
) -> dict[str, Any]:
    """IVF: k-means on a sample, assign all vectors, probe the nprobe nearest lists per query."""
    from sklearn.cluster import MiniBatchKMeans

    from pipelines.embeddings import DECODE_LUT, unit

    n = codes.shape[0]
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    sample = unit(DECODE_LUT[codes[rng.choice(n, min(n, 100_000), replace=False)].view(np.uint8)])
    km = MiniBatchKMeans(n_clusters=args.nlist, random_state=0, batch_size=8192, n_init=1).fit(sample)
    cent = unit(km.cluster_centers_.astype(np.float32))
    assign = np.empty(n, np.int32)
    for i in range(0, n, 500_000):
        v = unit(DECODE_LUT[codes[i : i + 500_000].view(np.uint8)])
        assign[i : i + 500_000] = np.argmax(v @ cent.T, axis=1)
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(args.nlist + 1))
    t_build = time.perf_counter() - t0
    recalls, times = [], []
    for q in queries:
        qn = q / np.linalg.norm(q)
        _, exact = numpy_topk(codes, qn, args.k)
        t0 = time.perf_counter()
        lists = np.argsort(-(cent @ qn))[: args.nprobe]
        cand = np.concatenate([order[bounds[li] : bounds[li + 1]] for li in lists])
        _, top = numpy_topk(codes[cand], qn, min(args.k, cand.size))
        found = cand[top]
        times.append(time.perf_counter() - t0)
        recalls.append(len(set(found.tolist()) & set(exact.tolist())) / args.k)
    t_q = float(np.median(times))
    return {
        "shipped": False,
        "nlist": args.nlist,
        "nprobe": args.nprobe,
        "build_s": round(t_build, 2),
        "query_s": round(t_q, 4),
        f"recall_at_{args.k}": round(float(np.mean(recalls)), 3),
        "queries_to_pay_off": math.ceil(t_build / max(exact_s - t_q, 1e-9)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=3_000_000, help="vectors in memory (default 3e6)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--chunk", type=int, default=262_144, help="Dask chunk rows")
    p.add_argument("--store-n", type=int, default=1_000_000, help="vectors written to a real store (0: skip)")
    p.add_argument("--nlist", type=int, default=256)
    p.add_argument("--nprobe", type=int, default=8)
    p.add_argument("--ivf-queries", type=int, default=5)
    p.add_argument("--no-ivf", action="store_true")
    args = p.parse_args()

    from pipelines.testing import synthetic_codes

    t0 = time.perf_counter()
    codes, _, cent = synthetic_codes(args.n, args.dim, n_classes=8, seed=0)
    t_gen = time.perf_counter() - t0
    rng = np.random.default_rng(42)
    q = cent[3] + rng.standard_normal(args.dim).astype(np.float32) * 0.2
    q /= np.linalg.norm(q)
    out: dict[str, Any] = {
        "benchmark": "similarity",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "params": {k: getattr(args, k) for k in ("n", "dim", "k", "chunk", "store_n")},
        "generate_s": round(t_gen, 2),
    }
    print(f"generated {args.n} int8 vectors (dim {args.dim}) in {t_gen:.1f} s", flush=True)
    mem = bench_memory(args, codes, q)
    out["memory"] = mem
    print(f"memory: {mem}", flush=True)
    if args.store_n > 0:
        work = Path(tempfile.mkdtemp(prefix="aom-bench-sim-"))
        try:
            out["store"] = bench_store(args, work, fmt=2)
            print(f"store: {out['store']}", flush=True)
            old = bench_store(args, work, fmt=1)
            print(f"store (format 1): {old}", flush=True)
            out["store_format1"] = old
            out["layout"] = {
                "search_cpu_ratio_f2_over_f1": round(out["store"]["search_cpu_s"] / old["search_cpu_s"], 3),
                "search_wall_ratio_f2_over_f1": round(out["store"]["search_s"] / old["search_s"], 3),
                "same_results": out["store"]["top_scores"] == old["top_scores"],
            }
            print(f"layout: {out['layout']}", flush=True)
            out["metric"] = {
                "search_cpu_ratio_whitened_over_cosine": round(
                    out["store"]["whitened_search_cpu_s"] / out["store"]["search_cpu_s"], 3
                ),
            }
            print(f"metric: {out['metric']}", flush=True)
            f16 = bench_store(args, work, fmt=2, quantisation="float16")
            print(f"store (float16): {f16}", flush=True)
            out["store_float16"] = f16
            out["quantisation"] = {
                "search_cpu_ratio_float16_over_int8": round(
                    f16["search_cpu_s"] / out["store"]["search_cpu_s"], 3
                ),
                "whitened_search_cpu_ratio_float16_over_int8": round(
                    f16["whitened_search_cpu_s"] / out["store"]["whitened_search_cpu_s"], 3
                ),
                "bytes_ratio_float16_over_int8": round(
                    f16["store_bytes_per_vector"] / out["store"]["store_bytes_per_vector"], 3
                ),
            }
            print(f"quantisation: {out['quantisation']}", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if not args.no_ivf:
        qs = (
            cent[rng.integers(0, 8, args.ivf_queries)]
            + rng.standard_normal((args.ivf_queries, args.dim)) * 0.2
        )
        out["ivf"] = bench_ivf(args, codes, qs.astype(np.float32), mem["dask_s"])
        print(f"ivf: {out['ivf']}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

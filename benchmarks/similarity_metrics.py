"""Diagnosis: which cosine ranks tokens best for similarity search: raw, centred or whitened?

Usage::

    .venv/bin/python benchmarks/similarity_metrics.py            # T29UNU north window, shipped checkpoint

Why: the spectral embedding's tokens share one large component (two unrelated tokens have raw
cosine ~0.99, ``aom eval``'s product metrics), so every similarity score is close to 1. Whether
the *ranking* that ``aom query similar`` / ``pipelines.query.similar`` returns suffers from it is
what this measures: the raw cosine (the default ``--metric cosine``) against centred vectors and
the ``--metric whitened`` cosine, on the same tokens in the same run.

What: each ``--embedding`` of a T29UNU window (``--window``: row, col, height, width in 60 m
pixels) through ``embed_raster`` (what ``aom embed-raster`` writes). Each token gets the scene's
SCL class when at least ``--purity`` of its pixels have it. Per class, up to ``--queries`` labelled
tokens are the queries. Each query's ``--k`` most similar labelled tokens come from a cosine over the
whole window, minus tokens within ``--exclude-tokens`` rows/columns of the query (its own
neighbourhood would make any embedding look good). The score is the share of those with the
query's class (precision@k), averaged per class, then over the classes (macro): the retrieval
precision of ``aom eval``'s product metrics (``pipelines.evaluation.product``, same defaults). Three searches:

* ``raw``: cosine of the stored vectors (what the query path does);
* ``centred (own mean)``: cosine after subtracting the window's mean token;
* ``centred (other mean)``: after subtracting the mean token of another window
  (``--centre-window``), as a per-dataset mean stored once would do;
* ``whitened (own)``: cosine after :class:`pipelines.query.Whitening` (32 principal axes, unit
  variance) fitted on a sample of the window's tokens, what ``aom query similar --metric whitened``
  does; ``whitened (other)``: fitted on the other window's tokens.

Baseline rows: ``raw bands``, the same search on each token's per-band mean reflectance (``raw``)
and on those means standardised per band over the window (``standardised``); ``random-init``, the
same searches on the embeddings of the checkpoint's random-init twin (same config and
normalisation statistics, other weights; ``--no-random-baseline`` leaves them out).

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.errors import InputError
from pipelines.evaluation.datasets import LabelledScene
from pipelines.evaluation.loaders import load_t29unu
from pipelines.evaluation.product import (
    RETRIEVAL,
    centre,
    checkpoint_file,
    retrieval_precision,
    scene_raster,
    token_labels,
    token_mean,
)
from pipelines.query.similarity import fit_whitening


def embed_window(
    scene: LabelledScene, checkpoint: str, embedding: str, root: Path, name: str
) -> tuple[np.ndarray, int]:
    """``[H, W, D]`` float32 tokens of ``scene`` as ``aom embed-raster`` writes them, and the token
    size in pixels (of the bands at the finest GSD, what the raster holds)."""
    import rasterio

    from pipelines.embed import embed_raster

    raster, bands, _notes = scene_raster(scene, root / f"{name}.tif")
    out = root / f"{name}-{embedding}.tif"
    res = embed_raster(
        str(raster),
        str(out),
        checkpoint,
        sensor=bands[0].sensor,
        bands=[b.name for b in bands],
        embedding=embedding,
        progress=False,
    )
    with rasterio.open(out) as src:
        return np.moveaxis(src.read(), 0, -1).astype(np.float32), int(res.token_px)


def raster_hw(scene: LabelledScene) -> tuple[int, int]:
    """Shape of the scene's bands at the finest GSD (the raster ``scene_raster`` writes)."""
    finest = min(b.gsd_m for b in scene.bands)
    shape = next(a.shape for a, b in zip(scene.arrays, scene.bands) if abs(b.gsd_m - finest) <= 1e-6 * finest)
    return int(shape[0]), int(shape[1])


def band_means(scene: LabelledScene, px: int, shape: tuple[int, int]) -> np.ndarray:
    """``[H, W, C]`` mean reflectance of each band over each token's pixels (bands at the finest
    GSD; NaN where a token has no valid pixel)."""
    h, w = shape
    finest = min(b.gsd_m for b in scene.bands)
    arrays = [a for a, b in zip(scene.arrays, scene.bands) if abs(b.gsd_m - finest) <= 1e-6 * finest]
    ah, aw = arrays[0].shape
    stack = np.full((h * px, w * px, len(arrays)), np.nan, dtype=np.float32)  # [H*px, W*px, C]
    stack[:ah, :aw] = np.stack(arrays, axis=-1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN tokens stay NaN
        return np.asarray(np.nanmean(stack.reshape(h, px, w, px, -1), axis=(1, 3)))


def _window(text: str, name: str) -> tuple[int, int, int, int]:
    try:
        r, c, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{name}: row,col,height,width in 60 m pixels, got {text!r}") from None
    return r, c, h, w


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="checkpoints/aom-tiny-real.safetensors")
    ap.add_argument("--embedding", default="spectral,position", help="comma-separated: spectral, position")
    ap.add_argument("--window", default="0,0,300,600", help="row,col,height,width of T29UNU (60 m pixels)")
    ap.add_argument("--centre-window", default="300,0,300,600", help="the window of the 'other' mean")
    ap.add_argument("--k", type=int, default=RETRIEVAL["k"])
    ap.add_argument("--exclude-tokens", type=int, default=RETRIEVAL["exclude_tokens"])
    ap.add_argument("--queries", type=int, default=RETRIEVAL["queries"], help="queries per class")
    ap.add_argument(
        "--purity", type=float, default=RETRIEVAL["purity"], help="share of a token's pixels its class needs"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-random-baseline", action="store_true", help="skip the random-init rows")
    a = ap.parse_args(argv)
    embeddings = [e.strip() for e in a.embedding.split(",") if e.strip()]
    bad = sorted(set(embeddings) - {"spectral", "position"})
    if bad or not embeddings:
        print(f"--embedding: spectral and/or position, got {a.embedding!r}", file=sys.stderr)
        return 2
    try:
        window, other_window = _window(a.window, "--window"), _window(a.centre_window, "--centre-window")
        scene, other = load_t29unu(None, window), load_t29unu(None, other_window)
    except InputError as exc:  # EvalDataError included: the shared data is absent
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(a.threads)
    t0, cpu0 = time.perf_counter(), time.process_time()
    rows: list[dict[str, Any]] = []

    def search(
        kind: str, name: str, vectors: np.ndarray, lab: np.ndarray, weights: str = "checkpoint"
    ) -> None:
        per = retrieval_precision(vectors, lab, a.k, a.exclude_tokens, a.queries)
        row = {
            "weights": weights,
            "embedding": kind,
            "search": name,
            "precision_macro": round(float(np.mean(list(per.values()))), 4),
            "per_class": {scene.class_names[c]: round(v, 4) for c, v in per.items()},
        }
        rows.append(row)
        print(
            f"{weights:11s} {kind:9s} {name:20s} precision@{a.k} {row['precision_macro']:.3f} {row['per_class']}"
        )

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = {"checkpoint": a.checkpoint}
        if not a.no_random_baseline:
            models["random-init"] = checkpoint_file(
                "random:", root / "random.safetensors", 0, like=a.checkpoint
            )
        for embedding in embeddings:
            for weights, ckpt in models.items():
                emb, px = embed_window(scene, ckpt, embedding, root, "window")
                other_emb, _ = embed_window(other, ckpt, embedding, root, "other")
                lab = token_labels(scene.labels, raster_hw(scene), px, emb.shape[:2], a.purity)
                if embedding == embeddings[0] and weights == "checkpoint":
                    counts = {scene.class_names[c]: int((lab == c).sum()) for c in np.unique(lab[lab >= 0])}
                    print(f"{emb.shape[0]} x {emb.shape[1]} tokens of {px} px, labelled {counts}")
                    means = band_means(scene, px, emb.shape[:2])
                    flat = means.reshape(-1, means.shape[-1])
                    z = (means - np.nanmean(flat, 0)) / np.nanstd(flat, 0)
                    search("raw bands", "raw", means, lab, "-")
                    search("raw bands", "standardised", z, lab, "-")
                search(embedding, "raw", emb, lab, weights)
                search(embedding, "centred (own mean)", centre(emb, token_mean(emb)), lab, weights)
                search(embedding, "centred (other mean)", centre(emb, token_mean(other_emb)), lab, weights)
                for name, fit_on in (("whitened (own)", emb), ("whitened (other)", other_emb)):
                    search(embedding, name, fit_whitening(fit_on).apply(emb), lab, weights)
    result = {
        "benchmark": "similarity_metrics",
        "checkpoint": a.checkpoint,
        "window": window,
        "centre_window": other_window,
        "k": a.k,
        "exclude_tokens": a.exclude_tokens,
        "queries_per_class": a.queries,
        "rows": rows,
        "cpu_s": round(time.process_time() - cpu0, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

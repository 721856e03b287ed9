"""Diagnosis: where the all-band gap between the AOM embedding and raw-band statistics comes from.

Usage::

    .venv/bin/python benchmarks/probe_pooling.py                          # t29unu:north, shipped checkpoint
    .venv/bin/python benchmarks/probe_pooling.py --dataset synthetic --c 1 --half-draws 1

For one labelled dataset (``load_dataset``, as ``aom eval``: same patches, class balancing and blocked
splits via ``prepare_patches`` / ``make_splits``), linear probes (``make_probe``; C = 1 is the
protocol's, further ``--c`` values are a sweep; ``auto`` chooses C on each training fold alone by
grouped inner cross-validation, ``choose_c``, the same rule for every feature) on these features of the checkpoint and of its
random-init twin (``random_like``: same config and normalisation, other weights), in the same run:

* ``pooled`` [D]: mean of valid position tokens, what ``aom embed`` writes;
* ``pooled+std`` [2D]: that mean and the standard deviation of the position tokens;
* ``spectral`` [S * D]: per spectral query (``SPECTRAL_QUERIES``: Sentinel-2 MSI's 12 surface bands)
  the mean over positions of the band token the encoder infers there from the bands present
  (``AOM.encode_with_queries``), so its layout does not depend on the input's bands;
* ``band-tokens`` [C_ref * D]: per band the mean of its band tokens over positions, laid out on the
  all-band reference set as ``raw_features`` lays out raw statistics (``layout_on_reference``);
* ``raw`` ``mean,std`` [2 C_ref]: the protocol's raw-band baseline (per band mean and std of
  reflectance); ``raw`` ``mean`` [C_ref]: its means only (the first moments, what a mean of token
  vectors can carry); ``half_imputed`` of the ``mean,std`` row (half bands, transfer only): the
  missing bands' raw statistics predicted from the present ones by a ridge regression fitted on
  the training fold's all-band raw statistics (no labels), then the all-band probe: how much a
  band-agnostic feature *could* keep when it infers the missing bands as well as a linear
  regression on this scene does;
* ``spectral pca<k>`` [k] (with ``--pca-from DATASET``): the spectral feature projected on its first
  k principal axes, fitted on another dataset's all-band spectral features (no labels; e.g. the
  area the checkpoint trained on): which share of the spectral feature's variance the probes use.

Half-bands (the protocol's ``band_subsets`` at 50 %, ``--half-draws`` subsets): ``transfer`` fits on
all-band training features and tests on the subset's features, ``refit`` fits and tests on the subset.
Scores are accuracy (micro-F1 multi-label), mean over the splits (and draws). The last stdout line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aom_model import SPECTRAL_QUERIES
from pipelines.errors import InputError
from pipelines.evaluation import DatasetSpec, load_dataset
from pipelines.evaluation.datasets import PatchSet
from pipelines.evaluation.features import (
    Encoder,
    encoder_outputs,
    layout_on_reference,
    load_encoder,
    random_like,
    raw_features,
)
from pipelines.evaluation.probes import band_subsets, fit_predict, parse_c, score
from pipelines.evaluation.protocol import EvalConfig, make_splits, prepare_patches

Splits = list[tuple[list[tuple[np.ndarray, np.ndarray]], str]]


def encoder_variants(enc: Encoder, ps: PatchSet, ref: Sequence[Any], batch: int) -> dict[str, np.ndarray]:
    o = encoder_outputs(enc, ps, batch, band_tokens=True, queries=SPECTRAL_QUERIES)
    bt = o["band_tokens"]  # [N, C, D]
    qt = o["queries"]  # [N, S, D]
    return {
        "spectral": qt.reshape(len(qt), -1),  # [N, S * D]: spectral queries, S2 MSI frame
        "pooled": o["pooled"],  # [N, D]
        "pooled+std": np.concatenate([o["pooled"], o["pos_std"]], axis=1),  # [N, 2D]
        "band-tokens": layout_on_reference(ps.bands, [bt[:, j] for j in range(bt.shape[1])], ref),
    }


def mean_score(
    splits: Splits, y: np.ndarray, ml: bool, predict: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> float:
    """Mean score over the splits of ``predict(train_idx, test_idx)`` -> predictions for test_idx."""
    out = []
    for folds, _ in splits:
        preds, trues = [], []
        for tr, te in folds:
            preds.append(predict(tr, te))
            trues.append(y[te])
        out.append(score(np.concatenate(trues), np.concatenate(preds), ml)["score"])
    return float(np.mean(out))


def probe(
    splits: Splits, y: np.ndarray, x_tr: np.ndarray, x_te: np.ndarray, c: float | str, ml: bool, g: np.ndarray
) -> float:
    """Mean score over the splits of a linear probe fitted on x_tr[train] and tested on x_te[test]
    (``c="auto"``: C chosen on each training fold by grouped inner CV over its blocks ``g[train]``)."""
    return mean_score(
        splits, y, ml, lambda tr, te: fit_predict("linear", x_tr[tr], y[tr], x_te[te], ml, c=c, groups=g[tr])
    )


def pca_basis(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean [F], first k principal axes [F, k]) of the finite rows of ``x`` [N, F]."""
    x = x[np.isfinite(x).all(axis=1)]
    mu = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
    return mu, vt[:k].T


def raw_variants(x: np.ndarray) -> dict[str, np.ndarray]:
    """``raw_features`` [N, 2C] ((mean, std) per band) and its means only [N, C]."""
    return {"mean,std": x, "mean": x[:, 0::2]}


def probe_imputed(
    splits: Splits, y: np.ndarray, x: np.ndarray, keep: np.ndarray, c: float | str, ml: bool, g: np.ndarray
) -> float:
    """``probe`` of the all-band raw statistics ``x`` [N, 2C] applied to test patches whose columns
    outside ``keep`` are predicted from those in it by a ridge regression fitted on the fold's
    training patches (features only, all bands known there, as the transfer probe's own training)."""
    from sklearn.linear_model import Ridge

    miss = np.setdiff1d(np.arange(x.shape[1]), keep)

    def predict(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        ok = np.isfinite(x[tr]).all(axis=1)
        reg = Ridge(alpha=1.0).fit(x[tr][ok][:, keep], x[tr][ok][:, miss])
        x_te = x[te].copy()
        x_te[:, miss] = reg.predict(np.nan_to_num(x_te[:, keep]))
        return fit_predict("linear", x[tr], y[tr], x_te, ml, c=c, groups=g[tr])

    return mean_score(splits, y, ml, predict)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--dataset", default="t29unu:north", help="as `aom eval --dataset`: t29unu[:north|south], ..."
    )
    ap.add_argument("--checkpoint", default="checkpoints/aom-tiny-real.safetensors")
    ap.add_argument("--patch-px", type=int, default=16)
    ap.add_argument(
        "--c",
        default="1,10",
        help="logistic-regression C values (1 = the protocol's); 'auto': chosen per training fold by "
        "grouped inner cross-validation over C_GRID (pipelines.evaluation.probes.choose_c)",
    )
    ap.add_argument("--half-draws", type=int, default=5, help="half-band subsets (0: skip half bands)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--pca-from", default="", help="dataset whose spectral features fit the PCA rows (default: none)"
    )
    ap.add_argument("--pca-k", default="8,16,32,64", help="principal axes kept, one row each")
    a = ap.parse_args(argv)
    try:
        cs = [parse_c(v, "--c") for v in a.c.split(",") if v.strip()]
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not cs:
        print("--c: one or more positive numbers or 'auto'", file=sys.stderr)
        return 2
    try:
        pca_k = [int(v) for v in a.pca_k.split(",") if v.strip()]
    except ValueError:
        pca_k = []
    if a.pca_from and (not pca_k or any(k <= 0 for k in pca_k)):
        print(f"--pca-k: comma-separated positive integers, got {a.pca_k!r}", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    cpu0, t0 = time.process_time(), time.perf_counter()

    cfg = EvalConfig(checkpoint=a.checkpoint, threads=a.threads, batch_size=a.batch_size)
    try:
        ps = prepare_patches(load_dataset(DatasetSpec(a.dataset), patch_px=a.patch_px, seed=cfg.seed), cfg)
    except (InputError, ValueError) as exc:  # EvalDataError is an InputError: bad input, no traceback
        print(f"{a.dataset}: {exc}", file=sys.stderr)
        return 2
    splits = make_splits(ps, cfg)
    y, ml, ref, g = ps.labels, ps.multilabel, ps.bands, ps.groups
    enc = load_encoder(cfg.checkpoint, seed=cfg.seed, threads=a.threads)
    rnd = random_like(enc, seed=cfg.seed)
    bases: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # model -> (mean [F], axes [F, K])
    if a.pca_from:
        try:
            other = prepare_patches(
                load_dataset(DatasetSpec(a.pca_from), patch_px=a.patch_px, seed=cfg.seed), cfg
            )
        except (InputError, ValueError) as exc:
            print(f"--pca-from {a.pca_from}: {exc}", file=sys.stderr)
            return 2
        for m, e in (("checkpoint", enc), ("random-init", rnd)):
            bases[m] = pca_basis(encoder_variants(e, other, ref, a.batch_size)["spectral"], max(pca_k))

    def variants(m: str, e: Encoder, p: PatchSet) -> dict[str, np.ndarray]:
        out = encoder_variants(e, p, ref, a.batch_size)
        if m in bases:
            mu, axes = bases[m]
            for k in pca_k:
                out[f"spectral pca{k}"] = (out["spectral"] - mu) @ axes[:, :k]
        return out

    extract: dict[str, Callable[[PatchSet], dict[str, np.ndarray]]] = {
        "checkpoint": lambda p: variants("checkpoint", enc, p),
        "random-init": lambda p: variants("random-init", rnd, p),
        "raw": lambda p: raw_variants(raw_features(p, ref)),
    }
    print(f"{ps.name}: {len(ps)} patches, {len(ps.class_names)} classes, {len(ref)} bands; {splits[0][1]}")
    full = {(m, v): x for m, fn in extract.items() for v, x in fn(ps).items()}
    rows: list[dict[str, Any]] = []
    for (m, v), x in full.items():
        for c in cs:
            s = probe(splits, y, x, x, c, ml, g)
            rows.append({"model": m, "features": v, "dims": int(x.shape[1]), "C": c, "all_bands": s})
            print(f"  {m:12s} {v:15s} dims {x.shape[1]:4d} C {c}: all bands {s:.3f}", flush=True)
    subsets = band_subsets(len(ref), 0.5, a.half_draws, cfg.seed) if a.half_draws > 0 else []
    per: dict[tuple[str, str, float | str, str], list[float]] = {}
    for idx in subsets:
        sub = ps.subset(idx)
        for m, fn in extract.items():
            for v, x_sub in fn(sub).items():
                for c in cs:
                    per.setdefault((m, v, c, "transfer"), []).append(
                        probe(splits, y, full[m, v], x_sub, c, ml, g)
                    )
                    per.setdefault((m, v, c, "refit"), []).append(probe(splits, y, x_sub, x_sub, c, ml, g))
        keep = np.array([2 * i + k for i in idx for k in (0, 1)])  # raw_features: (mean, std) per band
        for c in cs:
            per.setdefault(("raw", "mean,std", c, "imputed"), []).append(
                probe_imputed(splits, y, full["raw", "mean,std"], keep, c, ml, g)
            )
    for r in rows:
        for mode in ("transfer", "refit", "imputed"):
            got = per.get((r["model"], r["features"], r["C"], mode))
            if got:
                r[f"half_{mode}"] = float(np.mean(got))
                r[f"half_{mode}_retention"] = float(np.mean(got)) / r["all_bands"]
    for r in rows:
        if "half_transfer" in r:
            print(
                f"  {r['model']:12s} {r['features']:15s} C {r['C']}: half bands transfer "
                f"{r['half_transfer']:.3f} ({r['half_transfer_retention']:.2f} of all), refit {r['half_refit']:.3f}"
                + (
                    f", imputed {r['half_imputed']:.3f} ({r['half_imputed_retention']:.2f} of all)"
                    if "half_imputed" in r
                    else ""
                )
            )
    result = {
        "benchmark": "probe_pooling",
        "dataset": ps.name,
        "checkpoint": a.checkpoint,
        "patches": len(ps),
        "classes": len(ps.class_names),
        "bands": [b.key for b in ref],
        "split": splits[0][1],
        "splits": len(splits),
        "metric": "micro-F1" if ml else "accuracy",
        "half_band_subsets": [[ref[i].key for i in s] for s in subsets],
        "pca_from": a.pca_from or None,
        "rows": rows,
        "cpu_s": round(time.process_time() - cpu0, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

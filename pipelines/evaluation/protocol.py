"""The robustness protocol: band-missing, cross-sensor and cross-resolution probes.

For every feature extractor (the checkpoint's AOM encoder, a random-init encoder of the same config,
raw-band statistics) and probe (logistic regression, kNN) on one blocked train/test split:

* **band-missing** - all bands, then seeded random subsets keeping 75 / 50 / 25 % of the bands
  (``draws`` subsets each; mean and spread over the draws);
* **cross-sensor** - the patches seen as another sensor (nearest source band relabelled with the
  target band's wavelength and FWHM; e.g. Landsat OLI, the HLS S30 core bands, MODIS);
* **cross-resolution** - the same footprint at 2x and 4x coarser GSD (area average).

Two probe modes per condition:

* ``transfer`` - the probe is fitted on all-band, native-GSD training features and applied to the
  changed test patches (the robustness the model claims: one probe, any band set / GSD);
* ``refit`` - the probe is fitted and tested on the changed band set / GSD (how much information the
  features keep when the data only ever has those bands).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.errors import InputError
from pipelines.evaluation.datasets import (
    EvalDataError,
    PatchSet,
    balance,
    band_dict,
    drop_empty_classes,
)
from pipelines.evaluation.features import (
    Encoder,
    band_token_features,
    encoder_features,
    load_encoder,
    needs_input_stats,
    random_like,
    raw_features,
    spectral_features,
)
from pipelines.evaluation.probes import (
    band_subsets,
    fit_predict,
    metric_name,
    parse_c,
    score,
    split_folds,
    stats_pools,
)
from pipelines.registry import BandSpec

log = logging.getLogger(__name__)

SETTINGS = ("band-missing", "cross-sensor", "cross-resolution")
MODES = ("transfer", "refit")
DEFAULT_SENSORS = ("landsat-oli", "hls-s30:B02,B03,B04,B8A,B11,B12", "modis-mcd43a4")
RAW = "raw-bands (mean, std)"
# encoder feature kinds: "pooled" = mean of position tokens (what `aom embed` writes); "spectral" = per
# spectral query (aom_model.SPECTRAL_QUERIES) the mean of the band token the encoder infers there (one
# layout for any band set, S x D); "band-tokens" = per band the mean of its band tokens, laid out on the
# all-band reference set (diagnostic, D x bands)
FEATURES = ("pooled", "spectral", "band-tokens")


@dataclass
class EvalConfig:
    checkpoint: str  # checkpoint path / URL, or "random:<config>"
    settings: tuple[str, ...] = SETTINGS
    fractions: tuple[float, ...] = (0.75, 0.5, 0.25)
    draws: int = 5
    splits: int = 3  # blocked train/test splits (seeds seed, seed + 1, ...); scores are averaged
    sensors: tuple[str, ...] = DEFAULT_SENSORS
    factors: tuple[int, ...] = (2, 4)
    probes: tuple[str, ...] = ("linear", "knn")
    knn_k: int = 10
    max_per_class: int = 300
    min_per_class: int = 10  # classes with fewer patches are left out (and reported)
    test_fraction: float = 0.3
    seed: int = 0
    batch_size: int = 64
    random_baseline: bool = True
    raw_baseline: bool = True
    registry: tuple[str, ...] = ()
    threads: int | None = None
    token_m: float | None = None  # ground size of one token (m); None: the checkpoint's token_ground_m
    features: tuple[str, ...] = ("pooled",)  # encoder feature kinds (FEATURES); goals use the first
    # the linear probe's C (1: the protocol); "auto": chosen per training fold by grouped inner CV
    # (probes.choose_c, the same rule for every feature; 15 more fits per linear probe)
    probe_c: float | str = 1.0

    def __post_init__(self) -> None:
        if self.checkpoint.startswith("random:"):  # before any data is loaded
            from aom_model.config import AOMConfig

            try:
                AOMConfig.named(self.checkpoint.removeprefix("random:"))
            except ValueError as exc:
                raise InputError(f"--checkpoint {self.checkpoint}: {exc} (random:<name>)") from None
        bad = [f for f in self.features if f not in FEATURES]
        if bad or not self.features or len(set(self.features)) != len(self.features):
            raise ValueError(f"features must be distinct, from {FEATURES}; got {list(self.features)}")
        if not self.settings:  # none would evaluate the all-band reference only
            raise ValueError(f"settings is empty; choose from {SETTINGS}")
        bad = [s for s in self.settings if s not in SETTINGS]
        if bad:
            raise ValueError(f"unknown settings {bad}; choose from {SETTINGS}")
        if any(not 0 < f < 1 for f in self.fractions):
            raise ValueError("fractions must be in (0, 1)")
        if any(int(f) < 2 for f in self.factors):
            raise ValueError("coarsening factors must be integers >= 2")
        if self.draws < 1 or self.splits < 1:
            raise ValueError("draws and splits must be >= 1")
        bad = [p for p in self.probes if p not in ("linear", "knn")]
        if bad or not self.probes:
            raise ValueError(f"unknown probes {bad}; choose from ('linear', 'knn')")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.knn_k < 1 or self.batch_size < 1 or self.max_per_class < 0 or self.min_per_class < 1:
            raise ValueError("knn_k, batch_size and min_per_class must be >= 1, max_per_class >= 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be >= 1")
        self.probe_c = parse_c(self.probe_c)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


@dataclass
class Condition:
    setting: str
    label: str  # column label in the report, e.g. "50%", "landsat-oli", "4x"
    draw: int
    patches: PatchSet
    notes: list[str] = field(default_factory=list)
    order: float = 0.0  # sort key within the setting

    def describe(self) -> dict[str, Any]:
        return {
            "setting": self.setting,
            "condition": self.label,
            "draw": self.draw,
            "bands": [b.key for b in self.patches.bands],
            "gsd_m": sorted({round(b.gsd_m, 3) for b in self.patches.bands}),
            "notes": self.notes,
        }


@dataclass
class Extractor:
    name: str
    kind: str  # "checkpoint" | "random-init" | "raw"
    # (patches, reference bands, statistics pool: the patches whose pixels may set the input statistics)
    fn: Callable[[PatchSet, Sequence[BandSpec], np.ndarray | None], np.ndarray]
    aligned: bool  # features live in one space for any band set (no re-layout per reference)
    info: dict[str, Any] = field(default_factory=dict)
    features: str = "pooled"  # encoder feature kind (FEATURES), "raw" for the raw-band baseline
    # whether the features of a patch set depend on the statistics pool (the raw baseline's never do)
    uses_pool: Callable[[PatchSet], bool] = lambda _ps: True


@dataclass
class EvalResult:
    config: dict[str, Any]
    dataset: dict[str, Any]
    metric: str
    extractors: list[dict[str, Any]]
    conditions: list[dict[str, Any]]
    rows: list[dict[str, Any]]  # one per (condition, draw, extractor, probe, mode)
    summary: list[dict[str, Any]]  # mean / std over draws
    goals: dict[str, Any]
    wall_s: float
    product: list[dict[str, Any]] = field(default_factory=list)  # pipelines.evaluation.product

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def lookup(
        self, setting: str, condition: str, features: str, probe: str, mode: str
    ) -> dict[str, Any] | None:
        for s in self.summary:
            if (s["setting"], s["condition"], s["features"], s["probe"], s["mode"]) == (
                setting,
                condition,
                features,
                probe,
                mode,
            ):
                return s
        return None


def build_extractors(cfg: EvalConfig) -> list[Extractor]:
    enc = load_encoder(cfg.checkpoint, seed=cfg.seed, threads=cfg.threads)
    try:
        enc.token_m = enc.model.config.check_token_m(cfg.token_m)
    except ValueError as exc:
        raise InputError(f"{cfg.checkpoint}: {exc}") from None
    encoders = [(enc, "checkpoint" if not cfg.checkpoint.startswith("random:") else "random-init")]
    if cfg.random_baseline and not cfg.checkpoint.startswith("random:"):
        rnd = random_like(enc, seed=cfg.seed)
        rnd.token_m = enc.token_m
        encoders.append((rnd, "random-init"))
    exts = [_encoder_extractor(e, kind, cfg, feats) for e, kind in encoders for feats in cfg.features]
    if cfg.raw_baseline:
        exts.append(
            Extractor(
                RAW,
                "raw",
                lambda ps, ref, _pool: raw_features(ps, ref),
                aligned=False,
                features="raw",
                uses_pool=lambda _ps: False,
            )
        )
    return exts


def _encoder_extractor(enc: Encoder, kind: str, cfg: EvalConfig, feats: str = "pooled") -> Extractor:
    # info is enc.meta itself: encoding adds to it (the realised token size)
    enc.meta.update(source=enc.source, token_m=enc.token_m, normalisation=enc.norm_sources)

    def uses_pool(ps: PatchSet) -> bool:
        return needs_input_stats(enc, ps.bands)

    if feats == "band-tokens":

        def fn_bt(ps: PatchSet, ref: Sequence[BandSpec], pool: np.ndarray | None) -> np.ndarray:
            return band_token_features(enc, ps, ref, batch_size=cfg.batch_size, stats_pool=pool)

        # laid out per reference band like the raw baseline: not aligned
        return Extractor(
            f"{enc.name} band tokens",
            kind,
            fn_bt,
            aligned=False,
            info=enc.meta,
            features=feats,
            uses_pool=uses_pool,
        )

    if feats == "spectral":

        def fn_sq(ps: PatchSet, _ref: Sequence[BandSpec], pool: np.ndarray | None) -> np.ndarray:
            return spectral_features(enc, ps, batch_size=cfg.batch_size, stats_pool=pool)

        # one layout (the query frame) for any input band set: aligned
        return Extractor(
            f"{enc.name} spectral",
            kind,
            fn_sq,
            aligned=True,
            info=enc.meta,
            features=feats,
            uses_pool=uses_pool,
        )

    def fn(ps: PatchSet, _ref: Sequence[BandSpec], pool: np.ndarray | None) -> np.ndarray:
        return encoder_features(enc, ps, cfg.batch_size, stats_pool=pool)

    return Extractor(enc.name, kind, fn, aligned=True, info=enc.meta, features=feats, uses_pool=uses_pool)


def build_conditions(ps: PatchSet, cfg: EvalConfig) -> tuple[Condition, list[Condition]]:
    """-> (reference condition: all bands at native GSD, the changed conditions)."""
    from pipelines.evaluation.loaders import parse_sensor_target

    ref = Condition("band-missing", "100%", 0, ps, order=1.0)
    out: list[Condition] = []
    n = len(ps.bands)
    if "band-missing" in cfg.settings:
        for f in cfg.fractions:
            for d, idx in enumerate(band_subsets(n, f, cfg.draws, cfg.seed)):
                sub = ps.subset(idx)
                out.append(Condition("band-missing", f"{round(100 * f)}%", d, sub, order=f))
    if "cross-sensor" in cfg.settings:
        for i, spec in enumerate(cfg.sensors):
            label, target = parse_sensor_target(spec, cfg.registry)
            try:
                sub, notes = ps.as_sensor(target)
            except EvalDataError as e:
                log.warning("cross-sensor %s skipped: %s", spec, e)
                continue
            out.append(Condition("cross-sensor", _short(label), 0, sub, notes, order=i))
    if "cross-resolution" in cfg.settings:
        for f in cfg.factors:
            out.append(Condition("cross-resolution", f"{int(f)}x", 0, ps.coarsen(int(f)), order=float(f)))
    return ref, out


def _short(label: str) -> str:
    sensor, _, bands = label.partition(":")
    return f"{sensor} ({len(bands.split(','))} bands)" if bands else sensor


def prepare_patches(ps: PatchSet, cfg: EvalConfig) -> PatchSet:
    """Check labels, drop classes with fewer than ``min_per_class`` patches (single-label), cap the
    patches per class (seeded)."""
    ps.check_labels()
    dropped: dict[str, int] = {}
    if not ps.multilabel and cfg.min_per_class > 1:
        counts = ps.class_counts()
        dropped = {c: n for c, n in counts.items() if 0 < n < cfg.min_per_class}
        if dropped:
            keep = [k for k, c in enumerate(ps.class_names) if c not in dropped]
            ps = ps.take(np.flatnonzero(np.isin(ps.labels, keep)))
    ps = drop_empty_classes(balance(ps, cfg.max_per_class, cfg.seed))
    ps.meta["classes_dropped"] = {
        c: f"{n} patch(es) < min_per_class {cfg.min_per_class}" for c, n in dropped.items()
    }
    ps.check_labels()
    return ps


def run_evaluation(
    ps: PatchSet,
    cfg: EvalConfig,
    extractors: Sequence[Extractor] | None = None,
    progress: Callable[[str], None] | None = None,
) -> EvalResult:
    """Run the protocol on labelled patches (see the module docstring)."""
    t0 = time.perf_counter()
    say = progress or (lambda m: log.info("%s", m))
    ps = prepare_patches(ps, cfg)
    splits = make_splits(ps, cfg)
    split_desc = splits[0][1]
    pools, pool_of, pool_desc = stats_pools(splits, len(ps))
    exts = list(extractors) if extractors is not None else build_extractors(cfg)
    ref, conds = build_conditions(ps, cfg)
    ref_bands = ps.bands
    y = ps.labels
    rows: list[dict[str, Any]] = []
    for ext in exts:
        say(f"features: {ext.name} on all bands ({len(ps)} patches)")
        x_ref = _features(ext, ps, ref_bands, pools)
        # reference condition: all bands, native GSD (transfer == refit)
        for si, (folds, _) in enumerate(splits):
            xs = [x_ref[pool_of[si][fi]] for fi in range(len(folds))]
            sc = _probe_all(cfg, folds, xs, xs, y, ps.multilabel, ps.groups)
            for probe, s in sc.items():
                for mode in MODES:
                    rows.append(_row(ref, ext, probe, mode, s, si))
        for c in conds:
            say(f"features: {ext.name} / {c.setting} {c.label} draw {c.draw}")
            x_c = _features(ext, c.patches, c.patches.bands, pools)
            x_c_ref = x_c if ext.aligned else _features(ext, c.patches, ref_bands, pools)
            for si, (folds, _) in enumerate(splits):
                at = pool_of[si]
                xr, xc, xcr = ([x[at[fi]] for fi in range(len(folds))] for x in (x_ref, x_c, x_c_ref))
                sc_refit = _probe_all(cfg, folds, xc, xc, y, ps.multilabel, ps.groups)
                sc_transfer = _probe_all(cfg, folds, xr, xcr, y, ps.multilabel, ps.groups)
                for probe in cfg.probes:
                    rows.append(_row(c, ext, probe, "refit", sc_refit[probe], si))
                    rows.append(_row(c, ext, probe, "transfer", sc_transfer[probe], si))
    summary = summarise(rows)
    cond_desc = [ref.describe()] + [c.describe() for c in conds]
    folds = splits[0][0]
    train_n = int(sum(len(tr) for tr, _ in folds) / len(folds))
    test_n = int(sum(len(te) for _, te in folds))
    dataset = {
        "name": ps.name,
        "patches": len(ps),
        "classes": list(ps.class_names),
        "class_counts": ps.class_counts(),
        "multilabel": ps.multilabel,
        "bands": [band_dict(b) for b in ps.bands],
        "patch_m": ps.extent_m,
        "split": split_desc,
        "stats_pool": pool_desc,
        "folds": len(folds),
        "splits": len(splits),
        "train_patches": train_n,
        "test_patches": test_n,
        "meta": {k: v for k, v in ps.meta.items() if k not in ("rows", "cols")},
    }
    result = EvalResult(
        config=cfg.to_dict(),
        dataset=dataset,
        metric=metric_name(ps.multilabel),
        extractors=[{"name": e.name, "kind": e.kind, **_json_safe(e.info)} for e in exts],
        conditions=cond_desc,
        rows=rows,
        summary=summary,
        goals={},
        wall_s=0.0,
    )
    result.goals = goals(result, exts)
    result.wall_s = time.perf_counter() - t0
    return result


def _features(
    ext: Extractor, ps: PatchSet, ref: Sequence[BandSpec], pools: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """``ext``'s features of ``ps`` per statistics pool (computed once when they do not depend on it)."""
    if len(pools) > 1 and not ext.uses_pool(ps):
        return [ext.fn(ps, ref, pools[0])] * len(pools)
    return [ext.fn(ps, ref, pool) for pool in pools]


def _probe_all(
    cfg: EvalConfig,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    x_train_all: Sequence[np.ndarray],
    x_test_all: Sequence[np.ndarray],
    y: np.ndarray,
    multilabel: bool,
    groups: np.ndarray,
) -> dict[str, dict[str, float]]:
    """Per fold ``fi`` the probe trains on ``x_train_all[fi][tr]`` and is tested on ``x_test_all[fi][te]``
    (``cfg.probe_c="auto"``: its C chosen on the training patches' spatial blocks ``groups[tr]``)."""
    out = {}
    for probe in cfg.probes:
        preds, trues = [], []
        for fi, (tr, te) in enumerate(folds):
            preds.append(
                fit_predict(
                    probe,
                    x_train_all[fi][tr],
                    y[tr],
                    x_test_all[fi][te],
                    multilabel,
                    cfg.knn_k,
                    cfg.seed,
                    c=cfg.probe_c,
                    groups=groups[tr],
                )
            )
            trues.append(y[te])
        out[probe] = score(np.concatenate(trues), np.concatenate(preds), multilabel)
    return out


def make_splits(ps: PatchSet, cfg: EvalConfig) -> list[tuple[list[tuple[np.ndarray, np.ndarray]], str]]:
    """``cfg.splits`` blocked train/test splits (seeds ``seed, seed + 1, ...``); one when the data
    is small enough for leave-one-group-out (every seed would give the same folds)."""
    out = []
    for i in range(cfg.splits):
        folds, desc = split_folds(ps.groups, ps.labels, cfg.seed + i, cfg.test_fraction, ps.multilabel)
        out.append((folds, desc))
        if desc.startswith("leave-one-group-out"):
            break
    return out


def _row(
    c: Condition, ext: Extractor, probe: str, mode: str, s: dict[str, float], split: int = 0
) -> dict[str, Any]:
    return {
        "setting": c.setting,
        "condition": c.label,
        "order": c.order,
        "draw": c.draw,
        "split": split,
        "features": ext.name,
        "kind": ext.kind,
        "probe": probe,
        "mode": mode,
        "n_bands": len(c.patches.bands),
        **s,
    }


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over band draws x train/test splits per (setting, condition, features, probe, mode)."""
    keys: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        keys.setdefault((r["setting"], r["condition"], r["features"], r["probe"], r["mode"]), []).append(r)
    out = []
    for (setting, cond, feat, probe, mode), rs in keys.items():
        v = np.array([r["score"] for r in rs], dtype=np.float64)
        out.append(
            {
                "setting": setting,
                "condition": cond,
                "order": rs[0]["order"],
                "features": feat,
                "kind": rs[0]["kind"],
                "probe": probe,
                "mode": mode,
                "mean": float(v.mean()),
                "std": float(v.std()),
                "min": float(v.min()),
                "max": float(v.max()),
                "draws": len({r["draw"] for r in rs}),
                "splits": len({r.get("split", 0) for r in rs}),
                "runs": len(rs),
                "n_bands": sorted({int(r["n_bands"]) for r in rs}),
            }
        )
    return out


def goals(result: EvalResult, exts: Sequence[Extractor]) -> dict[str, Any]:
    """The project's targets: (a) the checkpoint beats the random-init encoder in every setting and
    condition; (b) with half the bands missing it keeps >= 90 % of its all-band score. They refer to
    the first encoder feature kind (``features``: the pooled embedding by default); every other kind
    gets the same checks under ``other_features`` (checkpoint vs random-init of the same kind)."""
    kinds = list(dict.fromkeys(e.features for e in exts if e.kind != "raw"))
    if not kinds:
        return {"checkpoint": None, "random_init": None}
    out = _goals_for(result, exts, kinds[0])
    if len(kinds) > 1:
        out["other_features"] = {k: _goals_for(result, exts, k) for k in kinds[1:]}
    return out


def _goals_for(result: EvalResult, exts: Sequence[Extractor], feats: str) -> dict[str, Any]:
    ckpt = next((e.name for e in exts if e.kind == "checkpoint" and e.features == feats), None)
    rnd = next((e.name for e in exts if e.kind == "random-init" and e.features == feats), None)
    out: dict[str, Any] = {"features": feats, "checkpoint": ckpt, "random_init": rnd}
    if ckpt is None:
        return out
    probes = sorted({s["probe"] for s in result.summary})
    conds = sorted(
        {(s["setting"], s["condition"], s["order"]) for s in result.summary if s["features"] == ckpt},
        key=lambda t: (SETTINGS.index(t[0]), -t[2] if t[0] == "band-missing" else t[2]),
    )
    if rnd is not None:
        paired: dict[tuple[Any, ...], float] = {
            (
                r["setting"],
                r["condition"],
                r["features"],
                r["probe"],
                r["mode"],
                r["draw"],
                r.get("split", 0),
            ): r["score"]
            for r in result.rows
        }
        beats = {}
        for mode in MODES:
            lost, n_cells = [], 0
            for setting, cond, _ in conds:
                for probe in probes:
                    a = result.lookup(setting, cond, ckpt, probe, mode)
                    b = result.lookup(setting, cond, rnd, probe, mode)
                    if not (a and b):
                        continue
                    n_cells += 1
                    keys = [k for k in paired if k[:5] == (setting, cond, ckpt, probe, mode)]
                    wins = sum(paired[k] > paired.get((*k[:2], rnd, *k[3:]), float("inf")) for k in keys)
                    if not a["mean"] > b["mean"]:
                        lost.append(
                            f"{setting} {cond} {probe}: {a['mean']:.3f} vs {b['mean']:.3f} "
                            f"(checkpoint ahead in {wins}/{len(keys)} paired runs)"
                        )
            beats[mode] = {
                "met": not lost,
                "cells": n_cells,
                "cells_won": n_cells - len(lost),
                "not_met_in": lost,
            }
        out["beats_random_init"] = beats
    retention = {}
    for mode in MODES:
        per = {}
        for probe in probes:
            full = result.lookup("band-missing", "100%", ckpt, probe, mode)
            half = result.lookup("band-missing", "50%", ckpt, probe, mode)
            if full and half and full["mean"] > 0:
                r = half["mean"] / full["mean"]
                per[probe] = {
                    "all_bands": full["mean"],
                    "half_bands": half["mean"],
                    "retention": r,
                    "met": r >= 0.9,
                }
        retention[mode] = per
    out["half_bands_retention"] = retention
    vs_raw: dict[str, dict[str, Any]] = {}  # issue 14: with all bands, probes >= raw-band statistics
    for probe in probes:
        a = result.lookup("band-missing", "100%", ckpt, probe, "transfer")
        b = result.lookup("band-missing", "100%", RAW, probe, "transfer")
        if a and b:
            vs_raw[probe] = {"checkpoint": a["mean"], "raw": b["mean"], "met": a["mean"] >= b["mean"]}
    out["all_bands_vs_raw"] = vs_raw
    return out


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    import json

    return dict(json.loads(json.dumps(d, default=str)))

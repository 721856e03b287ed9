"""Metrics that see the product: what ``aom embed-raster`` writes, not one patch encoded alone.

A scene (its bands at the finest GSD) is written as a float32 reflectance GeoTIFF and embedded with
:func:`pipelines.embed.embed_raster` exactly as a user would (overlapping chips, cores written), then:

* **chip-position share** (:func:`chip_position_share`): the share of the embedding variance
  explained by a token's place (row, column) inside its chip core, pooled over the D dimensions
  (between-place sum of squares / total sum of squares). 0 = tokens do not know where they sit in
  the chip; a model that encodes the chip position in every token is near 1.
* **shift consistency** (:func:`shift_consistency`): the raster cropped by ``s`` tokens (s = 1..k)
  at its top-left corner (``s`` rows and ``s`` columns) is embedded again; the mean cosine of the
  same ground token in both outputs, beside the mean cosine of unrelated tokens (seeded random pairs
  of the unshifted output) for scale. 1 = a ground location's embedding does not depend on where the
  raster (and so every chip) starts.
* **seam contrast** (:func:`seam_contrast`): mean cosine of adjacent tokens inside a chip core minus
  across a core seam (every ``core_tokens``). 0 = no visible chip seams. The same function applies to
  an ``aom embed`` tile mosaic with the tile period (tile seams).

* **retrieval precision** (:func:`retrieval_precision`): what a similarity search over the output
  returns. Tokens take the scene's label class when it covers ``purity`` of their pixels
  (:func:`token_labels`); per class, up to ``queries`` labelled tokens each get their ``k`` most
  similar labelled tokens (raw cosine, as ``aom query similar``), leaving out those within
  ``exclude_tokens`` rows/columns of the query; the share with the query's class, averaged per
  class, then over the classes (macro precision@k). The random-init twin gives its scale. Also
  with ``aom query similar --metric whitened`` (``whitened``: the same search after
  :class:`pipelines.query.Whitening` fitted on a sample of the output's tokens), and both again on
  the values ``aom embed`` stores for that embedding by default (``stored``: the round trip through
  ``pipelines.embed.chips.STORE_QUANTISATION``, int8-sqrt codes for position, float16 for spectral).

The three cosines are also reported on tokens centred on the output's mean token (:func:`centre`):
an embedding whose tokens share one large component (the spectral embedding: unrelated tokens at
cosine 0.99) has raw cosines near 1 whatever it encodes.

Each runs on one ``--embedding`` of the output (``position``, the default product, or ``spectral``;
:data:`PRODUCT_EMBEDDING` maps ``aom eval``'s feature kinds to them). Only valid (finite) tokens
count. The functions are pure numpy on ``[H, W, D]`` arrays.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.evaluation.datasets import LabelledScene
from pipelines.registry import BandSpec

GOALS = {"chip_position_share_max": 0.15, "shift_consistency_min": 0.97, "seam_contrast_max": 0.01}
"""Issue 14's goals for the product metrics."""

RETRIEVAL = {"k": 20, "exclude_tokens": 8, "queries": 80, "purity": 0.78}
"""Defaults of the retrieval precision (``product_metrics(retrieval=...)`` overrides them)."""

PRODUCT_EMBEDDING = {"pooled": "position", "spectral": "spectral"}
"""``aom eval`` feature kind -> the ``aom embed-raster --embedding`` whose output it describes (the
``band-tokens`` diagnostic is not a product)."""


def product_embeddings(features: Sequence[str]) -> tuple[str, ...]:
    """The product embeddings behind ``features`` (in their order, each once)."""
    out: list[str] = []
    for f in features:
        e = PRODUCT_EMBEDDING.get(f)
        if e is not None and e not in out:
            out.append(e)
    return tuple(out)


def _unit(emb: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(emb, axis=-1, keepdims=True)
    return emb / np.where(n > 0, n, 1.0)


def centre(emb: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    """``emb [..., D]`` minus ``mean`` (default: the mean of its valid tokens): the cosines of
    :func:`shift_consistency`, :func:`unrelated_cosine` and :func:`seam_contrast` on centred tokens
    measure the part that differs between tokens, which raw cosines cannot see when every token
    shares one large component (unrelated tokens then have a cosine near 1)."""
    if mean is None:
        mean = token_mean(emb)
    return (emb.astype(np.float64) - mean).astype(np.float32)


def token_mean(emb: np.ndarray) -> np.ndarray:
    """Mean over the valid (finite) tokens of ``emb [..., D]`` -> ``[D]``."""
    x = emb.reshape(-1, emb.shape[-1]).astype(np.float64)
    x = x[np.isfinite(x).all(axis=1)]
    return x.mean(axis=0) if len(x) else np.zeros(emb.shape[-1])


def chip_position_share(emb: np.ndarray, core_tokens: int, offset: int = 0) -> float:
    """Share of the variance of ``emb [H, W, D]`` (valid tokens) explained by the place in the chip
    core, ((row + offset) % core, (col + offset) % core); ``offset``: tokens the chip grid starts
    before the raster (``ChipLayout.offset_tokens``)."""
    h, w, d = emb.shape
    rows, cols = np.mgrid[0:h, 0:w] + offset
    place = ((rows % core_tokens) * core_tokens + cols % core_tokens).reshape(-1)
    x = emb.reshape(-1, d).astype(np.float64)
    ok = np.isfinite(x).all(axis=1)
    x, place = x[ok], place[ok]
    if len(x) < 2:
        return math.nan
    mu = x.mean(axis=0)
    total = float(((x - mu) ** 2).sum())
    if total <= 0:
        return 0.0
    between = 0.0
    for p in np.unique(place):
        sel = x[place == p]
        between += len(sel) * float(((sel.mean(axis=0) - mu) ** 2).sum())
    return between / total


def chip_position_chance(emb: np.ndarray, core_tokens: int, offset: int = 0) -> float:
    """What :func:`chip_position_share` gives, in expectation, for tokens that carry no position at
    all (independent tokens): (places - 1) / (valid tokens - 1) over the valid tokens of ``emb``.
    1 when no place holds two tokens (a grid within one chip core): the share then says nothing, and
    the goal (<= 0.15) can only be shown on a grid whose chance level is below it."""
    h, w, d = emb.shape
    rows, cols = np.mgrid[0:h, 0:w] + offset
    place = ((rows % core_tokens) * core_tokens + cols % core_tokens).reshape(-1)
    ok = np.isfinite(emb.reshape(-1, d)).all(axis=1)
    n = int(ok.sum())
    return math.nan if n < 2 else (len(np.unique(place[ok])) - 1) / (n - 1)


def shift_consistency(ref: np.ndarray, shifted: np.ndarray, shift: int) -> float:
    """Mean cosine of the same ground token: ``shifted[i, j]`` is ``ref[i + shift, j + shift]``."""
    h = min(ref.shape[0] - shift, shifted.shape[0])
    w = min(ref.shape[1] - shift, shifted.shape[1])
    a = _unit(ref[shift : shift + h, shift : shift + w].astype(np.float64))
    b = _unit(shifted[:h, :w].astype(np.float64))
    cos = (a * b).sum(axis=-1)
    return float(np.nanmean(cos)) if np.isfinite(cos).any() else math.nan


def unrelated_cosine(emb: np.ndarray, pairs: int = 20000, seed: int = 0) -> float:
    """Mean cosine of seeded random pairs of distinct valid tokens (the scale for consistency)."""
    x = _unit(emb.reshape(-1, emb.shape[-1]).astype(np.float64))
    x = x[np.isfinite(x).all(axis=1)]
    if len(x) < 2:
        return math.nan
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(x), pairs)
    j = (i + rng.integers(1, len(x), pairs)) % len(x)
    return float((x[i] * x[j]).sum(axis=1).mean())


def seam_contrast(emb: np.ndarray, period: int, offset: int = 0) -> dict[str, float]:
    """Adjacent-token cosine inside a period (chip core / tile) vs across its seams, both axes; the
    seams lie before the tokens ``t`` with ``(t + offset) % period == 0``."""
    u = _unit(emb.astype(np.float64))
    inside: list[np.ndarray] = []
    across: list[np.ndarray] = []
    for axis in (0, 1):
        a = u[:-1] if axis == 0 else u[:, :-1]
        b = u[1:] if axis == 0 else u[:, 1:]
        cos = (a * b).sum(axis=-1)  # between index i and i + 1 along the axis
        idx = np.arange(cos.shape[axis])
        seam = (idx + 1 + offset) % period == 0
        sel = seam[:, None] if axis == 0 else seam[None, :]
        sel = np.broadcast_to(sel, cos.shape)
        inside.append(cos[~sel & np.isfinite(cos)])
        across.append(cos[sel & np.isfinite(cos)])
    cin, cacross = np.concatenate(inside), np.concatenate(across)
    if not cin.size or not cacross.size:
        return {"inside": math.nan, "across": math.nan, "contrast": math.nan}
    mi, ma = float(cin.mean()), float(cacross.mean())
    return {"inside": mi, "across": ma, "contrast": mi - ma}


def token_labels(
    labels: np.ndarray, raster_hw: tuple[int, int], px: int, grid_hw: tuple[int, int], purity: float
) -> np.ndarray:
    """``[H, W]`` class of each output token (-1: no class covers ``purity`` of its pixels).

    ``labels`` covers the raster's extent at any resolution (nearest label per raster pixel);
    token ``(i, j)`` covers raster pixels ``[i px, (i + 1) px)`` x ``[j px, (j + 1) px)``, as
    ``embed_raster`` lays its grid (the last row/column may be partial: only its pixels count).
    """
    h, w = raster_hw
    gh, gw = grid_hw
    rows = np.arange(h) * labels.shape[0] // h
    cols = np.arange(w) * labels.shape[1] // w
    per_px = np.full((gh * px, gw * px), -1, dtype=np.int64)
    per_px[:h, :w] = labels[rows][:, cols]
    blocks = per_px.reshape(gh, px, gw, px).transpose(0, 2, 1, 3).reshape(gh, gw, px * px)
    inside = np.zeros((gh * px, gw * px), dtype=bool)
    inside[:h, :w] = True
    n_px = inside.reshape(gh, px, gw, px).sum(axis=(1, 3))
    out = np.full((gh, gw), -1, dtype=np.int64)
    for k in np.unique(blocks[blocks >= 0]):
        out[(blocks == k).sum(axis=-1) >= purity * np.maximum(n_px, 1)] = k
    return out


def retrieval_precision(
    emb: np.ndarray, lab: np.ndarray, k: int, exclude_tokens: int, queries: int, seed: int = 0
) -> dict[int, float]:
    """Per class: the share of each query's ``k`` most similar labelled tokens (raw cosine, tokens
    within ``exclude_tokens`` rows/columns of the query left out) that have its class. Queries:
    up to ``queries`` seeded tokens per class; classes with fewer than ``2 k`` tokens are left out."""
    rr, cc = np.nonzero(lab >= 0)
    ok = np.isfinite(emb[rr, cc]).all(axis=-1)
    rr, cc = rr[ok], cc[ok]
    x = _unit(emb[rr, cc].astype(np.float32))  # [N, D]
    y = lab[rr, cc]
    rng = np.random.default_rng(seed)
    out: dict[int, float] = {}
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        if members.size < 2 * k:
            continue
        q = rng.choice(members, min(queries, members.size), replace=False)
        scores = x[q] @ x.T  # [Q, N]
        near = (np.abs(rr[q, None] - rr[None]) <= exclude_tokens) & (
            np.abs(cc[q, None] - cc[None]) <= exclude_tokens
        )
        scores[near] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k]  # [Q, k]
        out[int(cls)] = float((y[top] == cls).mean())
    return out


@dataclass
class ProductMetrics:
    """The product metrics of one checkpoint on one scene (``to_dict`` for the summary)."""

    checkpoint: str
    """Checkpoint (path / URL) or ``random:<config>``."""
    embedding: str
    """The ``embed-raster --embedding`` measured (``position`` or ``spectral``)."""
    dim: int
    """Values per token of that output."""
    token_m: float
    """Realised token size of the output (m)."""
    core_tokens: int
    """Chip core (tokens a side); seams every ``core_tokens``."""
    grid_hw: tuple[int, int]
    """Output token grid (rows, columns)."""
    valid_tokens: int
    """Tokens with an embedding."""
    chip_position_share: float
    """Variance share explained by the token's place in its chip core."""
    chip_position_chance: float = math.nan
    """The share's chance level on this grid (:func:`chip_position_chance`): the goal counts as met
    only when the share and this level are both <= the goal (else the grid is too small to show it)."""
    shift_consistency: dict[int, float] = field(default_factory=dict)
    """Shift (tokens) -> mean cosine of the same ground token."""
    unrelated_cosine: float = math.nan
    """Mean cosine of unrelated tokens (for scale)."""
    seams: dict[str, float] = field(default_factory=dict)
    """Adjacent-token cosine inside / across chip seams and their difference (``contrast``)."""
    chips: int = 0
    """Chips the layout places over the unshifted raster."""
    chips_run: int = 0
    """Of those, the chips run (the others write no valid pixel): the cost, compare layouts by it."""
    chip: dict[str, Any] = field(default_factory=dict)
    """The chip layout the output was written with (``ChipLayout.to_dict``: margin, blending, offset, overhead)."""
    centred: dict[str, Any] = field(default_factory=dict)
    """``shift_consistency``, ``unrelated_cosine`` and ``seams`` again on tokens centred on the mean
    token of the unshifted output (:func:`centre`); the goals use the raw cosines above."""
    retrieval: dict[str, Any] = field(default_factory=dict)
    """Retrieval precision on the unshifted output (:func:`retrieval_precision`): its settings,
    ``precision`` (macro over ``per_class``; None when no class has ``2 k`` labelled tokens),
    ``per_class`` (class name -> precision), ``whitened`` (the same for the whitened metric, with
    its ``axes``), ``stored`` (both again on the store's default encoding of the embedding, named
    in its ``quantisation``) and ``labelled_tokens``."""

    def goals(self) -> dict[str, bool]:
        sc = [v for v in self.shift_consistency.values() if math.isfinite(v)]
        return {
            "chip_position_share": max(self.chip_position_share, self.chip_position_chance)
            <= GOALS["chip_position_share_max"],
            "shift_consistency": bool(sc) and min(sc) >= GOALS["shift_consistency_min"],
            "seam_contrast": abs(self.seams.get("contrast", math.nan)) < GOALS["seam_contrast_max"],
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shift_consistency"] = {str(k): v for k, v in self.shift_consistency.items()}
        d["goals"] = self.goals()
        return d


def scene_raster(scene: LabelledScene, path: Path) -> tuple[Path, list[BandSpec], list[str]]:
    """The scene's bands at its finest GSD as a float32 reflectance GeoTIFF (NaN nodata, a UTM CRS:
    the metrics need only the pixel grid); returns (path, bands written, notes)."""
    import rasterio
    from rasterio.transform import from_origin

    finest = min(b.gsd_m for b in scene.bands)
    keep = [i for i, b in enumerate(scene.bands) if abs(b.gsd_m - finest) <= 1e-6 * finest]
    shapes = {scene.arrays[i].shape for i in keep}
    if len(shapes) != 1:
        raise ValueError(f"bands at {finest:g} m have different shapes {sorted(shapes)}")
    (h, w), notes = shapes.pop(), []
    if len(keep) < len(scene.bands):
        notes.append(f"only the {len(keep)} bands at {finest:g} m are embedded (embed-raster takes one GSD)")
    data = np.stack([scene.arrays[i].astype(np.float32) for i in keep])
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=h,
        width=w,
        count=len(keep),
        dtype="float32",
        crs="EPSG:32629",
        transform=from_origin(500000.0, 6000000.0, finest, finest),
        nodata=float("nan"),
    ) as dst:
        dst.write(data)
    return path, [scene.bands[i] for i in keep], notes


def _crop(src_path: Path, dst_path: Path, px: int) -> Path:
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(src_path) as src:
        win = Window(px, px, src.width - px, src.height - px)
        profile = src.profile | {
            "height": src.height - px,
            "width": src.width - px,
            "transform": src.window_transform(win),
        }
        data = src.read(window=win)
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
    return dst_path


def _read_emb(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return np.moveaxis(src.read(), 0, -1).astype(np.float32)  # [H, W, D]


def product_metrics(
    scene: LabelledScene,
    checkpoint: str,
    token_m: float | None = None,
    shifts: Sequence[int] = (1, 2, 3),
    embedding: str = "position",
    core_tokens: int = 24,
    margin_tokens: int = 3,
    blend_tokens: int | None = None,
    batch_size: int = 8,
    workdir: str | None = None,
    registry_files: Sequence[str] = (),
    embed_kw: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    retrieval: Mapping[str, Any] | None = None,
) -> ProductMetrics:
    """Embed ``scene`` with ``aom embed-raster --embedding EMBEDDING`` (and cropped by each shift) and
    measure it. ``retrieval``: settings of the retrieval precision other than :data:`RETRIEVAL`."""
    from pipelines.embed import embed_raster

    say = progress or (lambda _m: None)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        raster, bands, _notes = scene_raster(scene, root / "scene.tif")
        sensors = {b.sensor for b in bands}
        kw: dict[str, Any] = {
            "token_m": token_m,
            "core_tokens": core_tokens,
            "margin_tokens": margin_tokens,
            "blend_tokens": blend_tokens,
            "batch_size": batch_size,
            "progress": False,
            "registry_files": registry_files,
            "embedding": embedding,
            **(embed_kw or {}),
        }
        if len(sensors) == 1 and "" not in sensors:
            kw.update(sensor=sensors.pop(), bands=[b.name for b in bands])
        else:
            kw.update(wavelengths=[b.center_wavelength_nm for b in bands], fwhm=[b.fwhm_nm for b in bands])
        say(f"product metrics: {embedding} embedding of the scene ({checkpoint})")
        res = embed_raster(str(raster), str(root / "emb.tif"), checkpoint, **kw)
        ref = _read_emb(root / "emb.tif")
        off = int(res.chip["offset_tokens"])
        mean = token_mean(ref)
        ref_c = centre(ref, mean)
        out = ProductMetrics(
            checkpoint=checkpoint,
            embedding=embedding,
            dim=res.dim,
            token_m=res.token_m,
            core_tokens=core_tokens,
            chip=dict(res.chip),
            chips=res.chips,
            chips_run=res.chips_run,
            grid_hw=(res.height, res.width),
            valid_tokens=res.valid_tokens,
            chip_position_share=chip_position_share(ref, core_tokens, off),
            chip_position_chance=chip_position_chance(ref, core_tokens, off),
            unrelated_cosine=unrelated_cosine(ref),
            seams=seam_contrast(ref, core_tokens, off),
            centred={
                "shift_consistency": {},
                "unrelated_cosine": unrelated_cosine(ref_c),
                "seams": seam_contrast(ref_c, core_tokens, off),
            },
            retrieval=_retrieval(
                scene, ref, raster, res.token_px, {**RETRIEVAL, **(retrieval or {})}, embedding
            ),
        )
        for s in shifts:
            say(f"product metrics: {embedding}, shifted by {s} token(s)")
            crop = _crop(raster, root / f"shift{s}.tif", s * res.token_px)
            embed_raster(str(crop), str(root / f"emb{s}.tif"), checkpoint, **kw)
            shifted = _read_emb(root / f"emb{s}.tif")
            out.shift_consistency[int(s)] = shift_consistency(ref, shifted, s)
            out.centred["shift_consistency"][str(s)] = shift_consistency(ref_c, centre(shifted, mean), s)
    return out


def _retrieval(
    scene: LabelledScene,
    emb: np.ndarray,
    raster: Path,
    px: int,
    settings: Mapping[str, Any],
    embedding: str,
) -> dict[str, Any]:
    import rasterio

    from pipelines.embed.chips import STORE_QUANTISATION
    from pipelines.embeddings import dequantize, encode
    from pipelines.query.similarity import fit_whitening

    with rasterio.open(raster) as src:
        raster_hw = (src.height, src.width)
    lab = token_labels(scene.labels, raster_hw, px, emb.shape[:2], float(settings["purity"]))
    k, exclude, queries = int(settings["k"]), int(settings["exclude_tokens"]), int(settings["queries"])

    def scored(vectors: np.ndarray) -> dict[str, Any]:
        per = retrieval_precision(vectors, lab, k, exclude, queries)
        return {
            "precision": float(np.mean(list(per.values()))) if per else None,
            "per_class": {scene.class_names[c]: v for c, v in per.items()},
        }

    def both(vectors: np.ndarray) -> dict[str, Any]:
        whitening = fit_whitening(vectors)  # on a sample of the same tokens, as the query path fits
        return {**scored(vectors), "whitened": {"axes": whitening.k, **scored(whitening.apply(vectors))}}

    quantisation = STORE_QUANTISATION[embedding]
    return {
        **settings,
        **both(emb),
        "stored": {"quantisation": quantisation, **both(dequantize(encode(emb, quantisation)))},
        "labelled_tokens": int((lab >= 0).sum()),
    }


def load_scene(spec: Any, seed: int = 0) -> LabelledScene | None:
    """The scene behind a dataset spec (t29unu halves / windows, synthetic, a GeoTIFF with a label
    raster); None for datasets of separate patches (BigEarthNet, labelled points). ``seed``: the
    synthetic scene's, as ``load_dataset`` draws it (the probes and the product metrics see one scene)."""
    import re

    from pipelines.evaluation.datasets import synthetic_scene
    from pipelines.evaluation.heldout import t29unu_window
    from pipelines.evaluation.loaders import load_geotiff_scene, load_t29unu

    low = spec.name.lower()
    if low in ("t29unu", "t29unu:north", "t29unu:south"):
        return load_t29unu(spec.real_data, t29unu_window(low, spec.window))
    if low.startswith("bigearthnet"):
        return None
    m = re.fullmatch(r"synthetic(?::(\d+))?", low)
    if m:
        return synthetic_scene(n_classes=int(m.group(1) or 4), seed=seed)
    if spec.labels and Path(spec.labels).suffix.lower() in (".csv", ".json", ".geojson"):
        return None
    return load_geotiff_scene(spec)


def checkpoint_file(spec: str, path: Path, seed: int, like: str | None = None) -> str:
    """A checkpoint file for ``spec``: itself, or ``random:<config>`` / a random init of ``like``'s
    config and statistics (so the two differ only in their weights) saved to ``path``."""
    import torch

    from aom_model import AOM, AOMConfig, load_checkpoint, save_checkpoint
    from pipelines.evaluation.features import RANDOM_PREFIX, _read_bytes

    if not spec.startswith(RANDOM_PREFIX):
        return spec
    stats = None
    if like is not None and not like.startswith(RANDOM_PREFIX):
        _m, cfg, stats, _meta = load_checkpoint(_read_bytes(like))
    else:
        cfg = AOMConfig.named(spec[len(RANDOM_PREFIX) :] or "tiny")
    torch.manual_seed(seed)
    save_checkpoint(path, AOM(cfg).eval(), norm_stats=stats)
    return str(path)


def run_product_metrics(
    scene: LabelledScene,
    checkpoint: str,
    token_m: float | None = None,
    shifts: Sequence[int] = (1, 2, 3),
    random_baseline: bool = True,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    embeddings: Sequence[str] = ("position",),
    **kw: Any,
) -> list[dict[str, Any]]:
    """Product metrics of ``checkpoint`` (and of a random init of its config, for scale), one row per
    embedding in ``embeddings`` and model, embeddings outermost."""
    from pipelines.evaluation.features import RANDOM_PREFIX

    runs = [("checkpoint" if not checkpoint.startswith(RANDOM_PREFIX) else "random-init", checkpoint)]
    if random_baseline and not checkpoint.startswith(RANDOM_PREFIX):
        runs.append(("random-init", RANDOM_PREFIX))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {
            kind: checkpoint_file(spec, Path(tmp) / f"{kind}.safetensors", seed, like=checkpoint)
            for kind, spec in runs
        }
        for embedding in embeddings:
            for kind, spec in runs:
                m = product_metrics(scene, paths[kind], token_m, shifts, embedding, progress=progress, **kw)
                m.checkpoint = spec if spec != RANDOM_PREFIX else f"random-init like {checkpoint}"
                out.append({"kind": kind, **m.to_dict()})
    return out

"""Chips, batching and chip borders for embedding: pixels of a padded region -> a token grid.

The encoder runs on overlapping chips and only the centre of each chip is kept (see
``docs/embedding.md``, "Chip borders"):

* the output token grid of a tile is cut into square *cores* of ``core_tokens`` tokens;
* each chip is its core plus ``margin_tokens`` tokens on every side, read from the neighbouring
  area (the next tile's pixels, or NaN where there is nothing), so a chip is
  ``core + 2 * margin`` tokens square;
* the encoder sees the whole chip; by default (``blend_tokens`` = 0) only the ``core x core`` centre
  tokens are written, so each token is written by exactly one chip and has at least
  ``margin_tokens * token_ground_m`` metres of real context on each side;
* with ``blend_tokens`` = b > 0 (seam blending, the standard sliding-window technique) each chip
  writes its core plus b tokens on every side, and a token's embedding is the weighted mean of the
  chips that wrote it: per axis a weight of 1 inside the core that falls off as a raised cosine
  (``sin^2``) over the 2b tokens that straddle each seam, separable (row weight x column weight); the
  weights of neighbouring chips sum to 1 everywhere (a partition of unity), so nothing is blurred
  beyond the 2b-token band around a seam. The chip grid then starts ``offset_tokens`` (about half a
  core) before the tile, so a tile edge lies inside a chip core, never on a seam: the chips across a
  tile edge are run by both tiles on the same padded pixels and give the same value, at the cost of
  one more chip row and column per tile (``ChipLayout.overhead``) and a wider padded read
  (``pad_tokens`` = margin + offset).

Cores and margins are whole multiples of the *alignment* (the fewest tokens whose ground size is a
multiple of every GSD used: 3 tokens = 480 m for 160 m tokens and 10/20/30/60 m pixels), so every
chip window starts on a pixel of every band group and nothing is resampled before the model.

Token positions are always the model's token grid, forced (``chip_plan``: the model's planner
``aom_model.plan_grid`` with ``grid_hw`` fixed) to exactly ``chip_tokens x chip_tokens`` tokens of
``token_ground_m`` metres; searching, the planner could pick a different grid for sizes that do not
divide evenly.

Nothing here knows about STAC or storage: it is plain numpy + torch, shared by tile embedding
(:mod:`pipelines.embed`) and raster embedding (:mod:`pipelines.embed.raster`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.embed.layout import (  # noqa: F401  (re-exported: the layout's home is layout.py)
    BLEND_WINDOW,
    DEFAULT_BLEND_TOKENS,
    ChipLayout,
    EmbedConfigError,
    alignment_tokens,
    blend_offset,
    choose_layout,
)
from pipelines.embeddings.format import Quantisation
from pipelines.registry import BandSpec

EPS = 1e-6


# ------------------------------------------------------------------------------------------
# Inputs


def band_record(band: BandSpec, collection: str) -> dict[str, Any]:
    """One input band as written into embeddings provenance and raster metadata (``bands`` lists).

    The collection the band was read from travels beside its identity (``GroupPixels.collection``)
    and is recorded here; key order and value types are part of the stored format.
    """
    return {
        "name": band.name,
        "sensor": band.sensor,
        "collection": collection,
        "gsd_m": float(band.gsd_m),
        "center_wavelength_nm": float(band.center_wavelength_nm),
        "fwhm_nm": float(band.fwhm_nm),
    }


@dataclass
class GroupPixels:
    """Bands of one pixel grid over a padded region: ``pixels [C, H, W]`` float32, NaN = no data.

    Row 0 is the northern edge of the padded region, column 0 its western edge.
    """

    collection: str
    gsd_m: float
    bands: tuple[BandSpec, ...]
    pixels: np.ndarray

    @property
    def label(self) -> str:
        return f"{self.collection}/{self.gsd_m:g}m"


def checked_token_m(config: Any, token_m: float | None, checkpoint: str = "the checkpoint") -> float:
    """The token size (m) a request asks for (None: the checkpoint's ``token_ground_m``), checked
    against the checkpoint's supported range (``AOMConfig.check_token_m``); EmbedConfigError names it."""
    try:
        return float(config.check_token_m(token_m))
    except ValueError as exc:
        raise EmbedConfigError(f"{checkpoint}: {exc}") from None


def check_gsds(config: Any, gsds: Sequence[float], token_m: float | None = None) -> list[str]:
    """Problems that make these GSDs unusable with this model config (empty list = fine)."""
    token_m = float(token_m if token_m is not None else config.token_ground_m)
    problems = []
    if not gsds:
        return ["no input bands"]
    finest = min(gsds)
    patch = token_m / finest
    if patch < config.patch_size_min - EPS or patch > config.patch_size_max + EPS:
        problems.append(
            f"the finest input GSD {finest:g} m needs {patch:.2f} px per {token_m:g} m token, outside the "
            f"model's patch range [{config.patch_size_min}, {config.patch_size_max}] px"
        )
    for g in sorted(set(gsds)):
        if g > token_m + EPS:
            problems.append(
                f"{g:g} m pixels are coarser than the model's {token_m:g} m tokens: leave that sensor out "
                "or use a checkpoint with coarser tokens"
            )
    return problems


def chip_plan(config: Any, gsds: Sequence[float], chip_tokens: int, token_m: float) -> Any:
    """The model's ``GridPlan`` for one chip: exactly ``chip_tokens`` tokens a side for every group.

    The model's own planner (``aom_model.plan_grid``) with the grid fixed instead of searched; a chip
    is ``chip_tokens * token_m`` metres a side, which must be whole pixels of every GSD.
    """
    from aom_model import plan_grid

    sides = []
    for g in gsds:
        px = chip_tokens * token_m / g
        if abs(px - round(px)) > 1e-6:
            raise EmbedConfigError(f"a {chip_tokens}-token chip is not whole {g:g} m pixels")
        sides.append((round(px), round(px)))
    return plan_grid(
        sides,
        gsds,
        token_m,
        config.kernel_sizes,
        config.patch_size_min,
        config.patch_size_max,
        grid_hw=(chip_tokens, chip_tokens),
    )


# ------------------------------------------------------------------------------------------
# Normalisation


SAME_BAND_FWHM_FRACTION = 0.5  # a statistics key is the same spectral band within this x FWHM


def input_stats(pixels: np.ndarray) -> tuple[float, float]:
    """(mean, std) of one band's valid (finite) pixels, as training computes its statistics;
    (0, 1) without a valid pixel, std 1 for a constant band."""
    v = pixels[np.isfinite(pixels)].astype(np.float64)
    if v.size == 0:
        return 0.0, 1.0
    std = float(v.std())
    return float(v.mean()), std if std > 1e-6 else 1.0


@dataclass(frozen=True)
class Normaliser:
    """Per-band ``(x - mean) / std``: the band's own statistics from the checkpoint (keys
    ``<sensor>/<band>``), else those of the input itself; never another band's.

    Built by :func:`resolve_normaliser`, the one place that decides which statistics a band gets
    (embedding and evaluation alike); ``sources`` records the decision per band key. A band whose
    source is ``input`` and that has no statistics yet gets those of the pixels it normalises
    (:meth:`with_input`; tile embedding: the padded tile).
    """

    means: Mapping[str, float]
    stds: Mapping[str, float]
    sources: Mapping[str, str]  # band key -> "exact" | "same-band:<key>" | "input" | "identity"

    def with_input(self, groups: Sequence[GroupPixels]) -> Normaliser:
        """The bands still without statistics get (mean, std) of their valid pixels in ``groups``."""
        todo = {b.key: g.pixels[i] for g in groups for i, b in enumerate(g.bands) if b.key not in self.means}
        if not todo:
            return self
        means, stds = dict(self.means), dict(self.stds)
        for key, px in todo.items():
            means[key], stds[key] = input_stats(px)
        return Normaliser(means, stds, self.sources)

    def apply(self, group: GroupPixels) -> np.ndarray:
        norm = self.with_input([group])
        mean = np.array([norm.means[b.key] for b in group.bands], dtype=np.float32)[:, None, None]
        std = np.array([norm.stds[b.key] for b in group.bands], dtype=np.float32)[:, None, None]
        return ((group.pixels - mean) / std).astype(np.float32, copy=False)

    def describe(self) -> dict[str, str]:
        return dict(sorted(self.sources.items()))


def resolve_normaliser(
    norm_stats: Mapping[str, Any] | None,
    bands: Sequence[BandSpec],
    fallback: Mapping[str, tuple[float, float]] | None = None,
) -> Normaliser:
    """Statistics for every band, never another band's (``docs/model.md``, "Normalisation"):

    * ``exact``: the checkpoint's statistics of the band's own key;
    * ``same-band:<key>``: else those of the same spectral band under another key (another product
      or resolution of the sensor, a near-identical instrument): a key whose centre wavelength is
      within ``SAME_BAND_FWHM_FRACTION`` x the band's FWHM (the nearest; ties: the smaller key);
    * ``input``: else the statistics of the input itself (mean, std of its valid pixels), from
      ``fallback[band.key]`` when the caller computed them over the whole input (a raster, a patch
      set), otherwise from the pixels normalised (:meth:`Normaliser.with_input`);
    * ``identity``: a checkpoint without any statistics (random init) and no fallback.

    Each band's statistics depend on that band alone: adding a band never changes another's.
    """
    means: dict[str, float] = {}
    stds: dict[str, float] = {}
    sources: dict[str, str] = {}
    table = dict((norm_stats or {}).get("bands") or {})
    if not table and fallback is None:
        for b in bands:
            means[b.key], stds[b.key], sources[b.key] = 0.0, 1.0, "identity"
        return Normaliser(means, stds, sources)

    def usable(key: str) -> bool:
        mean, std = float(table[key].get("mean", math.nan)), float(table[key].get("std", math.nan))
        return math.isfinite(mean) and math.isfinite(std) and std > 0

    with_wl = {
        k: float(v["wavelength_nm"])
        for k, v in table.items()
        if v.get("wavelength_nm") is not None and usable(k)
    }
    for b in bands:
        key: str | None = b.key if b.key in table and usable(b.key) else None
        source = "exact"
        if key is None and with_wl:
            reach = SAME_BAND_FWHM_FRACTION * float(b.fwhm_nm)
            near = min(with_wl, key=lambda k: (abs(with_wl[k] - b.center_wavelength_nm), k))
            if abs(with_wl[near] - b.center_wavelength_nm) <= reach:
                key, source = near, f"same-band:{near}"
        if key is not None:
            means[b.key], stds[b.key] = float(table[key]["mean"]), float(table[key]["std"])
        elif fallback is not None and b.key in fallback:
            means[b.key], stds[b.key] = fallback[b.key]
            source = "input"
        else:
            source = "input"  # filled from the pixels it normalises
        sources[b.key] = source
    return Normaliser(means, stds, sources)


# ------------------------------------------------------------------------------------------
# Running the encoder over a region


@dataclass
class RegionResult:
    embeddings: np.ndarray  # [R, C, D] float32, NaN = nodata
    chips_total: int = 0
    chips_run: int = 0
    model_s: float = 0.0
    batches: int = 0
    notes: list[str] = field(default_factory=list)


def _chip_arrays(
    groups: Sequence[np.ndarray], layout: ChipLayout, gsds: Sequence[float], i: int, j: int
) -> list[np.ndarray]:
    """Pixels of chip (i, j) from the padded region (its core starts at token ``i * core - offset``)."""
    out = []
    skip = layout.pad_tokens - layout.offset_tokens - layout.margin_tokens  # padding before chip (0, 0)
    for a, g in zip(groups, gsds):
        size = layout.pixels(layout.chip_tokens, g)
        r0 = layout.pixels(skip + i * layout.core_tokens, g)
        c0 = layout.pixels(skip + j * layout.core_tokens, g)
        out.append(a[:, r0 : r0 + size, c0 : c0 + size])
    return out


def _written_has_data(chip: Sequence[np.ndarray], layout: ChipLayout, gsds: Sequence[float]) -> bool:
    """Whether the tokens a chip writes (its core, plus ``blend_tokens`` each side) hold a valid pixel."""
    for a, g in zip(chip, gsds):
        m = layout.pixels(layout.margin_tokens, g) - layout.pixels(layout.blend_tokens, g)
        n = layout.pixels(layout.core_tokens + 2 * layout.blend_tokens, g)
        if np.isfinite(a[:, m : m + n, m : m + n]).any():
            return True
    return False


def _span(layout: ChipLayout, i: int, size: int) -> tuple[int, int, int]:
    """Region tokens ``[lo, hi)`` chip ``i`` writes along an axis of ``size`` tokens, and the index in
    the chip's written span (``[core + 2b]``, see ``ChipLayout.weights``) of token ``lo``."""
    start = i * layout.core_tokens - layout.offset_tokens - layout.blend_tokens
    lo, hi = max(start, 0), min(start + layout.core_tokens + 2 * layout.blend_tokens, size)
    return lo, hi, lo - start


def make_batch(
    chips: Sequence[Sequence[np.ndarray]], groups: Sequence[GroupPixels], device: Any = "cpu"
) -> Any:
    """A ``BandBatch`` of chips (each a list of per-group ``[C, h, w]`` arrays, normalised)."""
    import torch

    from aom_model import BandBatch, BandGroup

    out = []
    b = len(chips)
    for gi, g in enumerate(groups):
        px = torch.from_numpy(np.ascontiguousarray(np.stack([c[gi] for c in chips]))).to(device)
        c = px.shape[1]
        wl = torch.tensor([x.center_wavelength_nm for x in g.bands], dtype=torch.float32, device=device)
        fw = torch.tensor([x.fwhm_nm for x in g.bands], dtype=torch.float32, device=device)
        out.append(
            BandGroup(
                pixels=px,
                wavelength_nm=wl[None].expand(b, c),
                fwhm_nm=fw[None].expand(b, c),
                gsd_m=torch.full((b,), float(g.gsd_m), device=device),
            )
        )
    return BandBatch(tuple(out))


def check_embedding_kind(embedding: str) -> None:
    """``embedding`` is one of ``aom_model.EMBEDDINGS`` (EmbedConfigError naming them otherwise)."""
    from aom_model.config import EMBEDDINGS

    if embedding not in EMBEDDINGS:
        raise EmbedConfigError(
            f"embedding (--embedding) must be one of {', '.join(EMBEDDINGS)}; got {embedding!r}"
        )


STORE_QUANTISATION: dict[str, Quantisation] = {"position": "int8-sqrt", "spectral": "float16"}
"""How ``aom embed`` stores each embedding kind (``EmbeddingsVersion.quantisation``). The spectral
embedding's tokens share one large component (two unrelated tokens have cosine 0.99), so int8-sqrt
codes of its unit vectors keep that part and lose much of what differs between tokens: on T29UNU
north a token and its int8 round trip have cosine 0.90 once both are centred on the mean token
(position embedding: 0.9997); float16 keeps 1.000, at twice the bytes (docs/embedding.md)."""


def embedding_record(model: Any, embedding: str) -> dict[str, Any]:
    """What a token vector of ``embedding`` is, for the output's metadata (strict JSON)."""
    from aom_model.config import SPECTRAL_QUERIES

    rec: dict[str, Any] = {"kind": embedding, "dim": model.embedding_dim(embedding)}
    if embedding == "position":
        rec["description"] = "the encoder's position token"
    else:
        width = int(model.token_dim)
        rec["description"] = (
            f"per spectral query the band token the encoder infers there from the bands present; value "
            f"q * {width} + j is component j of query q"
        )
        rec["queries"] = [{"wavelength_nm": w, "fwhm_nm": f} for w, f in SPECTRAL_QUERIES]
    return rec


def run_encoder(
    model: Any, batch: Any, plan: Any, precision: str = "fp32", embedding: str = "position"
) -> tuple[np.ndarray, np.ndarray]:
    """``model.embed_tokens`` -> (tokens [B, H, W, E] float32, valid [B, H, W] bool)."""
    import torch

    dev = batch.groups[0].pixels.device
    with torch.inference_mode():
        if precision == "bf16":
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
                vec, ok = model.embed_tokens(batch, plan, embedding)  # [B, N, E], [B, N]
        else:
            vec, ok = model.embed_tokens(batch, plan, embedding)
    h, w = plan.grid_hw
    tokens = vec.float().reshape(vec.shape[0], h, w, -1).cpu().numpy()
    valid = ok.reshape(ok.shape[0], h, w).cpu().numpy()
    return tokens, valid


def embed_region(
    model: Any,
    groups: Sequence[GroupPixels],
    layout: ChipLayout,
    normaliser: Normaliser,
    core_hw: tuple[int, int] | None = None,
    batch_size: int = 8,
    device: Any = "cpu",
    precision: str = "fp32",
    embedding: str = "position",
) -> RegionResult:
    """Embed a padded region: groups cover ``core_hw + 2 * pad_tokens`` tokens; returns ``[R, C, D]``.

    ``core_hw`` (tokens, multiples of ``core_tokens``) defaults to the tile: ``tile_tokens`` square.
    ``embedding`` (``aom_model.EMBEDDINGS``) says what a token vector is; ``E = model.embedding_dim``.
    Chips whose written tokens hold no valid pixel are not run (their tokens are nodata, as the encoder
    would mark them anyway). A token is the weighted mean (``ChipLayout.weights``, row x column) of
    the chips that wrote it validly, NaN where none did; without blending that is its one chip's token.
    """
    import time

    rows, cols = core_hw or (layout.tile_tokens, layout.tile_tokens)
    if rows % layout.core_tokens or cols % layout.core_tokens:
        raise EmbedConfigError(f"region {rows}x{cols} tokens is not whole {layout.core_tokens}-token cores")
    dim = model.embedding_dim(embedding)
    res = RegionResult(np.full((rows, cols, dim), np.nan, dtype=np.float32))
    if not groups:
        return res
    gsds = [float(g.gsd_m) for g in groups]
    pad = layout.pad_tokens
    for g in groups:
        want = (layout.pixels(rows + 2 * pad, g.gsd_m), layout.pixels(cols + 2 * pad, g.gsd_m))
        if tuple(g.pixels.shape[1:]) != want:
            raise EmbedConfigError(f"group {g.label} has {g.pixels.shape[1:]} pixels, expected {want}")
    normaliser = normaliser.with_input(groups)  # bands without statistics: this region's own
    normed = [normaliser.apply(g) for g in groups]
    plan = chip_plan(model.config, gsds, layout.chip_tokens, layout.token_m)
    todo: list[tuple[int, int]] = []
    for i in range(layout.chips_along(rows)):
        for j in range(layout.chips_along(cols)):
            res.chips_total += 1
            if _written_has_data(_chip_arrays(normed, layout, gsds, i, j), layout, gsds):
                todo.append((i, j))
    acc = np.zeros((rows, cols, dim), dtype=np.float64)  # sum of weight x token
    wsum = np.zeros((rows, cols), dtype=np.float64)  # sum of the weights of valid tokens
    w1 = layout.weights()  # [core + 2b]
    first = layout.margin_tokens - layout.blend_tokens  # chip token of the written span's first
    for k in range(0, len(todo), max(1, batch_size)):
        part = todo[k : k + max(1, batch_size)]
        chips = [_chip_arrays(normed, layout, gsds, i, j) for i, j in part]
        batch = make_batch(chips, groups, device)
        t0 = time.perf_counter()
        tokens, valid = run_encoder(
            model, batch, plan, precision, embedding
        )  # [B, chip, chip, E], [B, chip, chip]
        res.model_s += time.perf_counter() - t0
        res.batches += 1
        res.chips_run += len(part)
        for (i, j), tok, val in zip(part, tokens, valid):
            r0, r1, wr = _span(layout, i, rows)
            c0, c1, wc = _span(layout, j, cols)
            if r1 <= r0 or c1 <= c0:
                continue
            sub = tok[first + wr : first + wr + r1 - r0, first + wc : first + wc + c1 - c0]  # [h, w, D]
            ok = val[first + wr : first + wr + r1 - r0, first + wc : first + wc + c1 - c0]
            ok = ok & np.isfinite(sub).all(axis=-1)
            w = np.outer(w1[wr : wr + r1 - r0], w1[wc : wc + c1 - c0]) * ok  # [h, w]
            acc[r0:r1, c0:c1] += w[..., None] * np.where(ok[..., None], sub, 0.0)
            wsum[r0:r1, c0:c1] += w
    have = wsum > 0
    res.embeddings[have] = (acc[have] / wsum[have][:, None]).astype(np.float32)
    return res


# ------------------------------------------------------------------------------------------
# Compositing


def nanmedian_time(stack: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Median over axis 0 ignoring NaN (all-NaN -> NaN); the mean of the two middle values when
    the count is even, as ``np.nanmedian`` (which is far slower here: it warns per all-NaN pixel).
    Written into ``out`` (float32, the shape of one slice) when given.

    Two values: ``(fmin + fmax) / 2`` in float32 (``fmin``/``fmax`` ignore NaN, so one valid value is
    its own median). The float32 sum of two float32 is their exact sum rounded once and halving is
    exact, so this is bit for bit the float64 mean rounded to float32 (for sums below 3.4e38)."""
    stack = np.asarray(stack, dtype=np.float32)
    t = stack.shape[0]
    if t == 1:
        if out is None:
            return stack[0]
        out[...] = stack[0]
        return out
    if t == 2:
        lo = np.fmin(stack[0], stack[1])
        res = np.fmax(stack[0], stack[1], out=out)
        res += lo
        res *= np.float32(0.5)
        return res
    s = np.sort(stack, axis=0)  # NaN sorts last
    n = np.isfinite(stack).sum(axis=0)
    lo_i = np.clip((n - 1) // 2, 0, t - 1)[None]
    hi_i = np.clip(n // 2, 0, t - 1)[None]
    a = np.take_along_axis(s, lo_i, axis=0)[0]
    b = np.take_along_axis(s, hi_i, axis=0)[0]
    med = ((a.astype(np.float64) + b) * 0.5).astype(np.float32)
    med[n == 0] = np.nan
    if out is None:
        return med
    out[...] = med
    return out

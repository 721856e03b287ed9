"""Patch features for the probes: the AOM encoder's pooled embedding and raw-band statistics.

``Encoder`` wraps a model loaded from a checkpoint (any local path or fsspec URL) or a random-init
model of a named config (``random:tiny``). Inputs are normalised as embedding normalises them (one
resolver, ``pipelines.embed.resolve_normaliser``): per band key ``<sensor>/<band>`` mean/std from the
checkpoint (its own key, else the same spectral band under another key); a band the checkpoint has
no statistics for, and every band without a checkpoint (random-init), gets that band's own statistics
over the patch set's *statistics pool* (never another band's): the protocol passes the patches no
probe is ever tested on (``stats_pool``), so test patches never shape the features.
Bands sharing a GSD form one ``BandGroup``; nothing is resampled.

``raw_features`` is the baseline: per patch and band the mean and standard deviation of valid
reflectance, laid out on a *reference* band set so that a probe fitted on one band set can be applied
to another: a band is matched by key, else by nearest centre wavelength within a tolerance, else its
features are NaN (the probe imputes the training mean).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.embed import input_stats, resolve_normaliser
from pipelines.errors import InputError
from pipelines.evaluation.datasets import PatchSet
from pipelines.registry import BandSpec

log = logging.getLogger(__name__)

RANDOM_PREFIX = "random:"


@dataclass
class Encoder:
    """A frozen AOM encoder and the statistics its inputs are normalised with."""

    name: str
    source: str  # checkpoint URL or "random:<config>"
    model: Any  # aom_model.AOM (imported lazily)
    norm_stats: dict[str, Any] | None
    meta: dict[str, Any] = field(default_factory=dict)
    norm_sources: dict[str, str] = field(
        default_factory=dict
    )  # band key -> "exact" | "same-band:<key>" | "input" | "identity"
    token_m: float | None = None  # ground size of one token (m); None: the config's token_ground_m

    @property
    def config_name(self) -> str:
        return str(self.meta.get("config_name", "custom"))


def _config_name(cfg: Any) -> str:
    from aom_model import AOMConfig

    for name in ("tiny", "small", "base"):
        if AOMConfig.named(name) == cfg:
            return name
    return "custom"


def _read_bytes(url: str) -> bytes:
    from pipelines.storage import filesystem, normalise_url

    fs, path = filesystem(normalise_url(url))
    with fs.open(path, "rb") as fh:
        data: bytes = fh.read()
    return data


def load_encoder(spec: str, seed: int = 0, threads: int | None = None) -> Encoder:
    """``spec``: a checkpoint path / URL, or ``random:<tiny|small|base>`` (seeded random init)."""
    import torch

    from aom_model import AOM, AOMConfig, load_checkpoint

    if threads:
        torch.set_num_threads(threads)
    if spec.startswith(RANDOM_PREFIX):
        cfg_name = spec[len(RANDOM_PREFIX) :] or "tiny"
        cfg = AOMConfig.named(cfg_name)
        torch.manual_seed(seed)
        model = AOM(cfg).eval()
        return Encoder(
            f"random-init ({cfg_name})", spec, model, None, {"config_name": cfg_name, "seed": seed}
        )
    model, cfg, norm_stats, meta = load_checkpoint(_read_bytes(spec))
    model.eval()
    extra = dict(meta.get("extra") or {})
    stem = spec.rstrip("/").rsplit("/", 1)[-1].removesuffix(".safetensors")
    if stem == "model":  # <out>/model.safetensors or <out>/checkpoints/step-N/model.safetensors
        stem = "/".join(spec.rstrip("/").rsplit("/", 3)[-3:-1])
    name = str(extra.get("name") or stem)
    return Encoder(
        f"AOM {name}",
        spec,
        model,
        norm_stats,
        {"config_name": _config_name(cfg), "step": extra.get("step"), "extra_keys": sorted(extra)},
    )


def random_like(enc: Encoder, seed: int = 0) -> Encoder:
    """A random-init model of ``enc``'s config, normalising inputs with ``enc``'s statistics (so the
    two differ only in their weights)."""
    import torch

    from aom_model import AOM

    torch.manual_seed(seed)
    model = AOM(enc.model.config).eval()
    return Encoder(
        f"random-init ({enc.config_name})",
        f"{RANDOM_PREFIX}{enc.config_name}",
        model,
        enc.norm_stats,
        {"config_name": enc.config_name, "seed": seed, "normalisation_from": enc.source},
    )


def band_stats(ps: PatchSet, pool: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """(mean, std) of every band's valid pixels over the patches ``pool`` (indices into ``ps``; None:
    the whole patch set): the input's own statistics, for bands the checkpoint has none for."""
    if pool is not None and len(pool) == 0:
        raise ValueError("empty statistics pool")
    return {b.key: input_stats(p if pool is None else p[pool]) for b, p in zip(ps.bands, ps.pixels)}


def needs_input_stats(enc: Encoder, bands: Sequence[BandSpec]) -> bool:
    """Whether some band of ``bands`` gets the input's own statistics (none in the checkpoint), so
    the features depend on which patches set them."""
    return "input" in resolve_normaliser(enc.norm_stats, bands, fallback={}).sources.values()


def encoder_outputs(
    enc: Encoder,
    ps: PatchSet,
    batch_size: int = 64,
    band_tokens: bool = False,
    queries: Sequence[tuple[float, float]] | None = None,
    stats_pool: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Encode every patch (one token plan, inputs normalised as embedding does; a band without
    checkpoint statistics gets those of the patches ``stats_pool``, None: of every patch) ->

    * ``pooled`` [N, D]: mean of valid position tokens (what ``aom embed`` writes);
    * ``pos_std`` [N, D]: standard deviation of the valid position tokens;
    * ``band_tokens`` [N, C, D] (only with ``band_tokens``): per band of ``ps.bands`` (in that order)
      the mean of its valid band tokens over the positions; NaN where a patch has none;
    * ``queries`` [N, S, D] (only with ``queries``, (wavelength, FWHM) nm each): per spectral query the
      mean over valid positions of the band token the encoder infers there (``AOM.encode_with_queries``;
      the position tokens, and so ``pooled``, are the same as without queries).

    A patch without a valid token gets NaN everywhere (the probe imputes it).
    """
    import torch

    from aom_model import BandBatch, plan_for
    from aom_model.blocks import masked_mean

    norm = resolve_normaliser(enc.norm_stats, ps.bands, fallback=band_stats(ps, stats_pool))
    enc.norm_sources.update(norm.sources)
    normed = [  # NaN stays NaN: invalid pixel
        ((p - norm.means[b.key]) / norm.stds[b.key]).astype(np.float32) for b, p in zip(ps.bands, ps.pixels)
    ]
    wl = [b.center_wavelength_nm for b in ps.bands]
    fw = [b.fwhm_nm for b in ps.bands]
    gsd = [b.gsd_m for b in ps.bands]
    model = enc.model
    token_m = float(enc.token_m if enc.token_m is not None else model.config.token_ground_m)
    extent = min(min(a.shape[-2:]) * g for a, g in zip(ps.pixels, gsd)) if ps.pixels else 0.0
    if ps.pixels and extent < token_m * (1 - 1e-6):
        raise InputError(
            f"patches of {extent:g} m are smaller than one {token_m:g} m token: raise --patch-px or lower --token-m"
        )
    if ps.pixels:  # the plan rounds the grid: a patch that is not whole tokens gets slightly other tokens
        realised = extent / max(1, round(extent / token_m))
        enc.meta["token_m_realised"] = realised
        if abs(realised - token_m) > 0.01 * token_m:
            log.warning(
                "patches of %g m are not whole %g m tokens: encoded with %g m tokens (choose --patch-px or "
                "--token-m so that they are)",
                extent,
                token_m,
                realised,
            )
    # BandBatch.from_bands groups bands by (GSD, H, W) in order of first appearance: channel c of
    # the band tokens is band order[c] of ps.bands (checked against the tokens' wavelengths below)
    first: dict[tuple[float, int, int], int] = {}
    for i, (a, g) in enumerate(zip(ps.pixels, gsd)):
        first.setdefault((float(g), int(a.shape[-2]), int(a.shape[-1])), i)
    order = sorted(
        range(len(ps.bands)),
        key=lambda i: first[(float(gsd[i]), int(ps.pixels[i].shape[-2]), int(ps.pixels[i].shape[-1]))],
    )
    outs: dict[str, list[np.ndarray]] = {"pooled": [], "pos_std": [], "band_tokens": [], "queries": []}
    q_wl = torch.tensor([q[0] for q in queries or ()], dtype=torch.float32)
    q_fw = torch.tensor([q[1] for q in queries or ()], dtype=torch.float32)
    with torch.inference_mode():
        for s in range(0, len(ps), batch_size):
            px = [torch.from_numpy(a[s : s + batch_size]) for a in normed]
            batch = BandBatch.from_bands(px, wl, fw, gsd)
            batch.validate()  # as forward_features, which this splits to see the band order
            # the one token plan (as pretraining and embedding): token_m metres per token
            tokens = model.tokenize(batch, plan_for(batch, model.config, token_m))
            if queries:
                out, qt = model.encode_with_queries(tokens, q_wl, q_fw)  # qt [B, N, S, D]
                qv = out.token_valid[..., None].expand(qt.shape[:3])  # [B, N, S]
                outs["queries"].append(masked_mean(qt, qv, dim=1).float().cpu().numpy())  # [B, S, D]
            else:
                out = model.encode(tokens, keep_band_tokens=band_tokens)
            valid = out.token_valid.float()[..., None]  # [B, N, 1]
            n_valid = valid.sum(1)  # [B, 1]
            var = (((out.tokens - out.pooled[:, None]) ** 2) * valid).sum(1) / n_valid.clamp(min=1)
            outs["pooled"].append(out.pooled.float().cpu().numpy())
            outs["pos_std"].append(var.sqrt().float().cpu().numpy())
            if band_tokens:
                if not torch.equal(tokens.wavelength_nm[0].cpu(), torch.tensor([wl[i] for i in order])):
                    raise RuntimeError("band token channels are not in the expected band order")
                bt, bv = out.band_tokens, out.band_token_valid  # [B, N, C, D], [B, N, C]
                assert bt is not None and bv is not None
                w = bv.float()[..., None]  # [B, N, C, 1]
                cnt = w.sum(1)  # [B, C, 1]
                m = (bt * w).sum(1) / cnt.clamp(min=1)  # [B, C, D]
                m = torch.where(cnt > 0, m, torch.full_like(m, float("nan")))
                inv = torch.empty(len(order), dtype=torch.long)
                inv[torch.tensor(order)] = torch.arange(len(order))
                outs["band_tokens"].append(m[:, inv].float().cpu().numpy())  # [B, C, D] in ps.bands order
    d = int(model.config.embed_dim)
    res = {
        "pooled": np.concatenate(outs["pooled"]) if outs["pooled"] else np.zeros((0, d), np.float32),
        "pos_std": np.concatenate(outs["pos_std"]) if outs["pos_std"] else np.zeros((0, d), np.float32),
    }
    if band_tokens:
        res["band_tokens"] = (
            np.concatenate(outs["band_tokens"])
            if outs["band_tokens"]
            else np.zeros((0, len(ps.bands), d), np.float32)
        )
    if queries:
        res["queries"] = (
            np.concatenate(outs["queries"])
            if outs["queries"]
            else np.zeros((0, len(queries), model.token_dim), np.float32)
        )  # [N, S, D]
    bad = ~np.isfinite(res["pooled"]).all(axis=1)
    if bad.any():  # a patch without a valid token: the probe imputes it
        for v in res.values():
            v[bad] = np.nan
    return res


def encoder_features(
    enc: Encoder, ps: PatchSet, batch_size: int = 64, stats_pool: np.ndarray | None = None
) -> np.ndarray:
    """-> [N, D] pooled embeddings (mean of valid position tokens) of every patch."""
    return encoder_outputs(enc, ps, batch_size, stats_pool=stats_pool)["pooled"]


def spectral_features(
    enc: Encoder,
    ps: PatchSet,
    queries: Sequence[tuple[float, float]] | None = None,
    batch_size: int = 64,
    stats_pool: np.ndarray | None = None,
) -> np.ndarray:
    """-> [N, S * D]: per spectral query ((wavelength, FWHM) nm; default ``SPECTRAL_QUERIES``) the mean
    over valid positions of the band token the encoder infers there from the bands present
    (``AOM.encode_with_queries``): one layout whatever bands a patch has."""
    from aom_model import SPECTRAL_QUERIES

    q = encoder_outputs(enc, ps, batch_size, queries=queries or SPECTRAL_QUERIES, stats_pool=stats_pool)[
        "queries"
    ]  # [N, S, D]
    return q.reshape(len(q), -1)


def band_token_features(
    enc: Encoder,
    ps: PatchSet,
    reference: Sequence[BandSpec] | None = None,
    tol_nm: float | None = None,
    batch_size: int = 64,
    stats_pool: np.ndarray | None = None,
) -> np.ndarray:
    """-> [N, D * len(reference)]: per reference band the mean of the matching band's band tokens
    (matched as ``raw_features`` matches bands), NaN where none matches."""
    bt = encoder_outputs(enc, ps, batch_size, band_tokens=True, stats_pool=stats_pool)[
        "band_tokens"
    ]  # [N, C, D]
    return layout_on_reference(ps.bands, [bt[:, j] for j in range(bt.shape[1])], reference, tol_nm)


def _match(band: BandSpec, candidates: Sequence[BandSpec], tol_nm: float | None) -> int | None:
    for i, c in enumerate(candidates):
        if c.key == band.key:
            return i
    if not candidates:
        return None
    i = min(
        range(len(candidates)),
        key=lambda j: abs(candidates[j].center_wavelength_nm - band.center_wavelength_nm),
    )
    c = candidates[i]
    tol = tol_nm if tol_nm is not None else max(30.0, 0.5 * (c.fwhm_nm + band.fwhm_nm))
    return i if abs(c.center_wavelength_nm - band.center_wavelength_nm) <= tol else None


def layout_on_reference(
    bands: Sequence[BandSpec],
    per_band: Sequence[np.ndarray],
    reference: Sequence[BandSpec] | None = None,
    tol_nm: float | None = None,
) -> np.ndarray:
    """Per-band features ``per_band[j]`` [N, K] of ``bands[j]`` -> [N, K * len(reference)]: block r
    holds the features of the band matching reference band r (key, else nearest centre wavelength
    within ``tol_nm``), NaN where none matches. ``reference`` None: ``bands`` itself."""
    ref = list(reference) if reference is not None else list(bands)
    if len(per_band) != len(bands):
        raise ValueError(f"{len(per_band)} per-band features for {len(bands)} bands")
    n = per_band[0].shape[0] if per_band else 0
    k = per_band[0].shape[1] if per_band else 0
    out = np.full((n, k * len(ref)), np.nan, dtype=np.float32)
    for r, band in enumerate(ref):
        j = _match(band, bands, tol_nm)
        if j is not None:
            out[:, k * r : k * (r + 1)] = per_band[j]
    return out


def raw_features(
    ps: PatchSet, reference: Sequence[BandSpec] | None = None, tol_nm: float | None = None
) -> np.ndarray:
    """-> [N, 2 * len(reference)]: per reference band the patch mean and std of valid reflectance of
    the matching band (key, else nearest wavelength within ``tol_nm``), NaN where none matches."""
    n = len(ps)
    per_band = []
    for p in ps.pixels:
        flat = p.reshape(n, -1)
        f = np.full((n, 2), np.nan, dtype=np.float32)
        # a patch with no valid pixel of this band keeps NaN (numpy would warn on the empty slice)
        has = np.isfinite(flat).any(axis=1)
        f[has, 0] = np.nanmean(flat[has], axis=1)
        f[has, 1] = np.nanstd(flat[has], axis=1)
        per_band.append(f)
    if not per_band:
        ref = list(reference) if reference is not None else []
        return np.full((n, 2 * len(ref)), np.nan, dtype=np.float32)
    return layout_on_reference(ps.bands, per_band, reference, tol_nm)

"""Frozen configuration of the AOM model, with named sizes and a strict dict round-trip."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

LAYOUTS = ("joint", "factorized")

SPECTRAL_QUERIES: tuple[tuple[float, float], ...] = (
    (442.7, 21.0),
    (492.4, 66.0),
    (559.8, 36.0),
    (664.6, 31.0),
    (704.1, 15.0),
    (740.5, 15.0),
    (782.8, 20.0),
    (832.8, 106.0),
    (864.7, 21.0),
    (945.1, 20.0),
    (1613.7, 91.0),
    (2202.4, 175.0),
)
"""(centre wavelength, FWHM) in nm of the default spectral queries (``AOM.encode_with_queries``):
Sentinel-2 MSI's 12 surface bands (B01-B09, B8A, B11, B12; not the B10 cirrus band), the most
widely available set of optical bands, used as a fixed spectral frame whatever the input bands."""

EMBEDDINGS = ("position", "spectral")
"""What a product token vector is (``AOM.embed_tokens``): ``position``, the encoder's position token
(``embed_dim`` values); ``spectral``, the band tokens the encoder infers at ``SPECTRAL_QUERIES``,
concatenated (``len(SPECTRAL_QUERIES) * band width`` values, the same layout for any input bands)."""


SPECTRAL_CONSISTENCY_LOSSES = ("cosine", "standardized", "whitened")
"""Distances of the spectral-consistency term (``AOMConfig.spectral_consistency_loss``)."""


@dataclass(frozen=True)
class AOMConfig:
    """Every hyper-parameter of the model and of its pretraining objective.

    Sizes: ``AOMConfig.named("tiny" | "small" | "base")``; ``base`` is ViT-B class (768 / 12 / 12).
    """

    # --- encoder -------------------------------------------------------------------------------
    embed_dim: int = 64  # D: width of position tokens (and of band tokens in the joint layout)
    depth: int = 2  # spatial blocks (factorized) / joint blocks (joint)
    num_heads: int = 2
    mlp_ratio: float = 4.0
    layout: str = "factorized"  # "joint" | "factorized"
    # factorized layout: narrow band-token stream, spectral attention every `spectral_every` blocks
    spectral_dim: int = 64  # d_s: width of band tokens in the factorized layout
    spectral_heads: int = 2
    spectral_mlp_ratio: float = 2.0
    spectral_every: int = 1  # spectral layer before blocks 0, k, 2k, ...
    pool_heads: int = 2  # heads of the learned-query attention pooling band -> position
    # spectral attention (factorized encoder, decoder) adds -slope * |delta wavelength| to its logits
    spectral_distance_bias: bool = True
    # --- tokenizer -----------------------------------------------------------------------------
    kernel_sizes: tuple[int, ...] = (8, 16, 32)  # kernel bank, FlexiViT-PI-resized to the needed patch
    token_ground_m: float = 160.0  # default ground footprint of one token (m); 16 px at 10 m
    # token sizes (m) this model serves (``--token-m``): pretraining draws one per step, log-uniform
    # over [token_m_min, token_m_max] (``aom_model.train.engine.token_m_for_step``); None = only
    # token_ground_m (checkpoints trained before token sizes were sampled)
    token_m_min: float | None = None
    token_m_max: float | None = None
    patch_size_min: int = 1
    patch_size_max: int = 32
    min_valid_pixel_frac: float = 0.5  # a token is valid if at least this fraction of its pixels is
    band_fourier_features: int = 16  # frequencies per quantity (wavelength, FWHM)
    band_min_freq_per_um: float = 0.1
    band_max_freq_per_um: float = 200.0
    num_band_ids: int = 0  # >0: learned embedding table for registry band ids (id -1 = unknown)
    # 2-D rotary positions (RoPE) of token centres in ground metres: head_dim / 4 frequencies per
    # axis with periods log-spaced in [min, max] metres; only ground offsets enter attention
    pos_min_period_m: float = 20.0
    pos_max_period_m: float = 1.0e5
    # --- decoder -------------------------------------------------------------------------------
    decoder_dim: int = 64
    decoder_depth: int = 1
    decoder_heads: int = 2
    # blocks of spatial attention (2-D RoPE) over all positions before the decoder's spectral blocks:
    # positions the encoder never saw (no visible band) get their context here, as in MAE's decoder
    decoder_spatial_depth: int = 1
    # --- pretraining objective -----------------------------------------------------------------
    mask_ratio: float = 0.75  # fraction of present band-position tokens masked
    # minimum share of the masked tokens that come from whole-band masks (the rest: whole positions,
    # which the encoder then skips); 0.5: at least every other masked token is a whole band's, and
    # at ratio 0.75 over half of the positions are hidden (the MAE-style saving, docs/model.md)
    band_mask_share: float = 0.5
    # pretraining encoder: at the positions it sees (those with a visible band), also compute the
    # masked band tokens as queries (their band embedding; never keys) in the spectral layers, so
    # the decoder starts from an encoder estimate of each hidden band (docs/pretraining.md, "Proof
    # of learning"); False: visible band tokens only (pure MAE). Spatial blocks see positions only.
    encode_masked_bands: bool = True
    temperature: float = 0.1  # InfoNCE temperature
    recon_weight: float = 1.0
    # per-patch-normalised targets drop each token's level and contrast, which carry most of the
    # spectral signal; a second head predicts the masked token's (mean, std) in band-normalised units
    stats_weight: float = 1.0
    # "linear": the statistics are bilinear in (position token, band embedding), so every band's
    # level is a linear read-out of the position token (what linear probes use); "mlp": an MLP on
    # their sum
    stats_readout: str = "linear"
    # tokens the statistics loss covers: "masked" (the masked present tokens, as the pixel loss) or
    # "present" (every present token, visible ones included: the position token must then carry the
    # levels of the bands it sees, not only infer the hidden ones)
    stats_tokens: str = "masked"
    align_weight: float = 0.5
    # chip statistics: the pooled embedding of each view (the masked native one and the coarse
    # one) predicts, per present band, the (mean, std) of the whole chip's native pixels in
    # band-normalised units, as a *linear* read-out (read-out vectors from the band's embedding):
    # the vector a user pools over an area must carry that area's spectrum and its spread, which a
    # mean of token vectors cannot hold unless the tokens are trained for it; 0 = off (no head)
    pooled_stats_weight: float = 0.0
    # spectral consistency (self-distillation across band subsets): the spectral-query tokens
    # (SPECTRAL_QUERIES) of a random subset of each sample's bands (a share drawn in
    # spectral_consistency_keep) are pulled towards those of all its bands (no gradient through
    # the latter), 1 - cosine per (position, query); 0 = off (no extra forward)
    spectral_consistency_weight: float = 0.0
    spectral_consistency_keep: tuple[float, float] = (0.25, 0.75)
    # the distance of that term: "cosine" (1 - cosine per (position, query)), "standardized" (mean
    # squared difference per dimension in units of the teacher's standard deviation over the batch's
    # positions, the scale a linear probe on standardised features sees) or "whitened" (the same along
    # the teacher's principal axes per query, so directions of little variance count as much)
    spectral_consistency_loss: str = "cosine"
    align_dim: int = 64
    norm_pix_eps: float = 1e-6

    def __post_init__(self) -> None:
        errors: list[str] = []
        if self.stats_readout not in ("linear", "mlp"):
            errors.append(f"stats_readout must be 'linear' or 'mlp', got {self.stats_readout!r}")
        if self.layout not in LAYOUTS:
            errors.append(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        for name in (
            "embed_dim",
            "depth",
            "num_heads",
            "spectral_dim",
            "spectral_heads",
            "spectral_every",
            "pool_heads",
            "decoder_dim",
            "decoder_depth",
            "decoder_heads",
            "align_dim",
            "band_fourier_features",
            "patch_size_min",
        ):
            if int(getattr(self, name)) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for dim, heads in (
            ("embed_dim", "num_heads"),
            ("spectral_dim", "spectral_heads"),
            ("spectral_dim", "pool_heads"),
            ("decoder_dim", "decoder_heads"),
        ):
            if getattr(self, heads) >= 1 and getattr(self, dim) % getattr(self, heads) != 0:
                errors.append(
                    f"{dim}={getattr(self, dim)} is not divisible by {heads}={getattr(self, heads)}"
                )
        for dim, heads in (("embed_dim", "num_heads"), ("decoder_dim", "decoder_heads")):
            h = max(1, int(getattr(self, heads)))
            if getattr(self, dim) % h == 0 and (getattr(self, dim) // h) % 4 != 0:
                errors.append(f"{dim} / {heads} must be a multiple of 4 (2-D rotary positions)")
        if not self.kernel_sizes or any(int(k) < 1 for k in self.kernel_sizes):
            errors.append(f"kernel_sizes must be a non-empty tuple of positive ints, got {self.kernel_sizes}")
        if self.patch_size_max < self.patch_size_min:
            errors.append("patch_size_max must be >= patch_size_min")
        if not (math.isfinite(self.token_ground_m) and self.token_ground_m > 0):
            errors.append(f"token_ground_m must be > 0, got {self.token_ground_m}")
        if (self.token_m_min is None) != (self.token_m_max is None):
            errors.append("token_m_min and token_m_max are given together or not at all")
        elif self.token_m_min is not None and self.token_m_max is not None:
            lo, hi = float(self.token_m_min), float(self.token_m_max)
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= self.token_ground_m <= hi):
                errors.append(
                    f"need 0 < token_m_min <= token_ground_m <= token_m_max, got {lo}, "
                    f"{self.token_ground_m}, {hi}"
                )
        if not 0.0 <= self.mask_ratio < 1.0:
            errors.append(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.band_mask_share <= 1.0:
            errors.append(f"band_mask_share must be in [0, 1], got {self.band_mask_share}")
        if self.decoder_spatial_depth < 0:
            errors.append(f"decoder_spatial_depth must be >= 0, got {self.decoder_spatial_depth}")
        if not 0.0 < self.min_valid_pixel_frac <= 1.0:
            errors.append(f"min_valid_pixel_frac must be in (0, 1], got {self.min_valid_pixel_frac}")
        if self.temperature <= 0:
            errors.append(f"temperature must be > 0, got {self.temperature}")
        if self.stats_tokens not in ("masked", "present"):
            errors.append(f"stats_tokens must be one of masked, present, got {self.stats_tokens!r}")
        if self.spectral_consistency_loss not in SPECTRAL_CONSISTENCY_LOSSES:
            errors.append(
                f"spectral_consistency_loss must be one of {', '.join(SPECTRAL_CONSISTENCY_LOSSES)}, "
                f"got {self.spectral_consistency_loss!r}"
            )
        lo, hi = self.spectral_consistency_keep
        if not 0.0 < lo <= hi < 1.0:
            errors.append(
                f"spectral_consistency_keep must be 0 < lo <= hi < 1, got {self.spectral_consistency_keep}"
            )
        if (
            self.recon_weight < 0
            or self.align_weight < 0
            or self.stats_weight < 0
            or self.pooled_stats_weight < 0
            or self.spectral_consistency_weight < 0
        ):
            errors.append("loss weights must be >= 0")
        if not 0 < self.pos_min_period_m < self.pos_max_period_m:
            errors.append("need 0 < pos_min_period_m < pos_max_period_m")
        if not 0 < self.band_min_freq_per_um < self.band_max_freq_per_um:
            errors.append("need 0 < band_min_freq_per_um < band_max_freq_per_um")
        if self.num_band_ids < 0:
            errors.append("num_band_ids must be >= 0")
        if errors:
            raise ValueError("invalid AOMConfig: " + "; ".join(errors))

    # ------------------------------------------------------------------------------------------
    @property
    def token_m_range(self) -> tuple[float, float]:
        """Token sizes (m) this model serves, inclusive (one size for a fixed-size checkpoint)."""
        if self.token_m_min is None or self.token_m_max is None:
            return (float(self.token_ground_m), float(self.token_ground_m))
        return (float(self.token_m_min), float(self.token_m_max))

    def check_token_m(self, token_m: float | None) -> float:
        """``token_m`` (None: ``token_ground_m``) if this model serves it, else ValueError naming the range."""
        if token_m is None:
            return float(self.token_ground_m)
        value = float(token_m)
        lo, hi = self.token_m_range
        if not (math.isfinite(value) and lo * (1 - 1e-9) <= value <= hi * (1 + 1e-9)):
            served = f"{lo:g} m only" if lo == hi else f"{lo:g} to {hi:g} m"
            raise ValueError(
                f"token size {token_m:g} m is outside the checkpoint's supported range: {served}"
            )
        return value

    # ------------------------------------------------------------------------------------------
    @classmethod
    def named(cls, name: str, **overrides: Any) -> AOMConfig:
        """A named size (``tiny`` for tests on CPU, ``small``, ``base`` = ViT-B class)."""
        if name not in _NAMED:
            raise ValueError(f"unknown config name {name!r}; choose one of {sorted(_NAMED)}")
        return cls.from_dict({**_NAMED[name], **overrides})

    def replace(self, **changes: Any) -> AOMConfig:
        return AOMConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["kernel_sizes"] = list(self.kernel_sizes)
        out["spectral_consistency_keep"] = list(self.spectral_consistency_keep)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AOMConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AOMConfig keys: {unknown}")
        kwargs = dict(data)
        if "kernel_sizes" in kwargs:
            kwargs["kernel_sizes"] = tuple(int(k) for k in kwargs["kernel_sizes"])
        if "spectral_consistency_keep" in kwargs:
            kwargs["spectral_consistency_keep"] = tuple(float(k) for k in kwargs["spectral_consistency_keep"])
        return cls(**kwargs)


# named sizes serve 40-320 m tokens (4-32 px at 10 m): pretraining samples that range
_TOKEN_RANGE: dict[str, Any] = {"token_m_min": 40.0, "token_m_max": 320.0}
_NAMED: dict[str, dict[str, Any]] = {
    "tiny": {**_TOKEN_RANGE},
    "small": {
        **_TOKEN_RANGE,
        "embed_dim": 384,
        "depth": 12,
        "num_heads": 6,
        "spectral_dim": 96,
        "spectral_heads": 2,
        "spectral_every": 12,  # one spectral layer (before block 0): >= 0.9x a ViT's CPU throughput
        "pool_heads": 2,
        "decoder_dim": 192,
        "decoder_depth": 2,
        "decoder_heads": 4,
        "align_dim": 256,
        "band_fourier_features": 32,
    },
    "base": {
        **_TOKEN_RANGE,
        "embed_dim": 768,
        "depth": 12,
        "num_heads": 12,
        "spectral_dim": 192,
        "spectral_heads": 3,
        "spectral_every": 12,  # one spectral layer (before block 0), as in small
        "pool_heads": 3,
        "decoder_dim": 384,
        "decoder_depth": 2,
        "decoder_heads": 6,
        "align_dim": 256,
        "band_fourier_features": 32,
    },
}

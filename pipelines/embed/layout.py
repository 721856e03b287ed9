"""Chip layout for embedding: how a tile (or a raster strip) is cut into overlapping chips, and how
the chips' tokens are stitched (cores only, or blended over the seams).

See :mod:`pipelines.embed.chips` (which runs the encoder over a layout) and ``docs/embedding.md``,
"Chip borders" and "Seam blending". Plain numpy; nothing here knows about models or storage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.errors import InputError


class EmbedConfigError(InputError):
    """The checkpoint, the request and the inputs do not fit together (raised before any work)."""


# ------------------------------------------------------------------------------------------
# Chip layout


def alignment_tokens(token_m: float, gsds: Sequence[float], limit: int = 64) -> int:
    """Fewest tokens whose ground size is a whole number of pixels of every GSD."""
    for k in range(1, limit + 1):
        if all(abs(k * token_m / g - round(k * token_m / g)) < 1e-6 for g in gsds):
            return k
    raise EmbedConfigError(
        f"no chip size up to {limit} tokens of {token_m:g} m is a whole number of pixels of every GSD "
        f"{sorted(set(gsds))}: choose bands whose GSDs divide a small multiple of the token size"
    )


BLEND_WINDOW = "sin2"
"""The blending weight over a seam: ``sin^2(pi/2 * x)``, x from 0 to 1 across the 2b-token band."""


@dataclass(frozen=True)
class ChipLayout:
    """How a region of ``tile_tokens`` tokens a side is cut into overlapping chips."""

    tile_tokens: int
    """Tokens a side of the region (a tile; a strip's rows for ``embed-raster``)."""
    core_tokens: int
    """Chip stride (tokens): the core each chip owns."""
    margin_tokens: int
    """Context tokens each side of the core, seen by the encoder."""
    token_m: float
    """Ground size of one token (m)."""
    blend_tokens: int = 0
    """b: tokens each chip writes beyond its core, blended over the 2b tokens around a seam (0 = cores only)."""
    offset_tokens: int = 0
    """Tokens the chip grid starts before the region (0 without blending; about half a core with it)."""

    def __post_init__(self) -> None:
        if self.core_tokens < 1 or self.margin_tokens < 0:
            raise EmbedConfigError(
                f"core_tokens must be >= 1 and margin_tokens >= 0, got {self.core_tokens} / {self.margin_tokens}"
            )
        if self.tile_tokens % self.core_tokens:
            raise EmbedConfigError(
                f"core_tokens {self.core_tokens} must divide the {self.tile_tokens} tokens of a tile side"
            )
        b, o = self.blend_tokens, self.offset_tokens
        if b < 0 or b > self.margin_tokens or 2 * b > self.core_tokens:
            raise EmbedConfigError(
                f"blend_tokens must be between 0 and min(margin_tokens, core_tokens / 2) = "
                f"{min(self.margin_tokens, self.core_tokens // 2)}, got {b}"
            )
        if not 0 <= o < self.core_tokens or (b and not b <= o <= self.core_tokens - b):
            raise EmbedConfigError(
                f"offset_tokens {o} must put the region's edges at least {b} tokens from a seam"
            )

    @property
    def chip_tokens(self) -> int:
        return self.core_tokens + 2 * self.margin_tokens

    def chips_along(self, tokens: int) -> int:
        """Chips along a region side of ``tokens`` tokens (the grid starts ``offset_tokens`` before it)."""
        return math.ceil((tokens + self.offset_tokens) / self.core_tokens)

    @property
    def chips_per_side(self) -> int:
        return self.chips_along(self.tile_tokens)

    @property
    def pad_tokens(self) -> int:
        """Tokens read around the region on every side: the margin, plus the offset of the chip grid."""
        extra = max(self.offset_tokens, self.core_tokens - self.offset_tokens) if self.offset_tokens else 0
        return self.margin_tokens + extra

    @property
    def margin_m(self) -> float:
        return self.margin_tokens * self.token_m

    @property
    def pad_m(self) -> float:
        """Metres read around a tile (``pad_tokens``): what a padded tile must hold."""
        return self.pad_tokens * self.token_m

    @property
    def chip_m(self) -> float:
        return self.chip_tokens * self.token_m

    @property
    def overhead(self) -> float:
        """Tokens computed per token kept (chips run per region x chip area / region area)."""
        return (self.chips_per_side * self.chip_tokens / self.tile_tokens) ** 2

    def pixels(self, tokens: int, gsd_m: float) -> int:
        """Pixels of ``gsd_m`` spanned by ``tokens`` tokens (a whole number by construction)."""
        v = tokens * self.token_m / gsd_m
        if abs(v - round(v)) > 1e-6:
            raise EmbedConfigError(f"{tokens} tokens of {self.token_m:g} m are not whole {gsd_m:g} m pixels")
        return round(v)

    def weights(self) -> np.ndarray:
        """Blending weight of a chip's written tokens along one axis: ``[core + 2b]`` float64, 1 in the
        core away from seams; over a seam the two chips' weights are ``sin^2`` and ``cos^2`` of the
        same angle (they sum to 1). All ones without blending."""
        b, c = self.blend_tokens, self.core_tokens
        w = np.ones(c + 2 * b, dtype=np.float64)
        if b:
            ramp = np.sin(np.pi / 2 * (np.arange(2 * b) + 0.5) / (2 * b)) ** 2  # [2b], rising
            w[: 2 * b] = ramp
            w[-2 * b :] = ramp[::-1]
        return w

    def to_dict(self) -> dict[str, Any]:
        return {
            "core_tokens": self.core_tokens,
            "margin_tokens": self.margin_tokens,
            "chip_tokens": self.chip_tokens,
            "token_ground_m": self.token_m,
            "chip_m": self.chip_m,
            "margin_m": self.margin_m,
            "blend_tokens": self.blend_tokens,
            "blend_window": BLEND_WINDOW if self.blend_tokens else "none",
            "offset_tokens": self.offset_tokens,
            "pad_tokens": self.pad_tokens,
            "chips_per_tile": self.chips_per_side**2,
            "overhead": round(self.overhead, 4),
        }


DEFAULT_BLEND_TOKENS = 3
"""Default ``blend_tokens`` (capped by the margin), chosen by measurement (``docs/embedding.md``)."""


def blend_offset(core_tokens: int, blend_tokens: int, align: int = 1) -> int:
    """The chip grid's offset for blending: the aligned value nearest half a core (0 without blending)."""
    if not blend_tokens:
        return 0
    o = align * round(core_tokens / 2 / align)
    if not blend_tokens <= o <= core_tokens - blend_tokens:
        raise EmbedConfigError(
            f"blend_tokens={blend_tokens} needs a {align}-aligned chip offset between {blend_tokens} and "
            f"{core_tokens - blend_tokens} tokens: use a larger core_tokens or blend_tokens=0"
        )
    return o


def choose_layout(
    tile_tokens: int,
    token_m: float,
    gsds: Sequence[float],
    core_tokens: int | None = None,
    margin_tokens: int | None = None,
    max_core_tokens: int = 32,
    blend_tokens: int | None = None,
) -> ChipLayout:
    """The chip layout for a tile of ``tile_tokens`` tokens and input GSDs ``gsds``.

    Defaults: the largest aligned core that divides the tile and is at most ``max_core_tokens``
    (24 tokens for 48-token tiles: 2 x 2 chips per tile), and the smallest aligned margin of at
    least 2 tokens (3 tokens = 480 m at 160 m tokens), ``blend_tokens`` ``DEFAULT_BLEND_TOKENS``
    capped by the margin, and then the aligned chip-grid offset nearest half a core (:func:`blend_offset`).
    Explicit cores and margins must be aligned; ``blend_tokens`` need not be.
    """
    align = alignment_tokens(token_m, gsds)
    if tile_tokens % align:
        raise EmbedConfigError(
            f"a tile of {tile_tokens} tokens of {token_m:g} m is not a whole number of {align}-token "
            f"pixel-aligned blocks for GSDs {sorted(set(gsds))}"
        )
    if core_tokens is None:
        cands = [c for c in range(align, tile_tokens + 1, align) if tile_tokens % c == 0]
        small = [c for c in cands if c <= max_core_tokens]
        core_tokens = max(small) if small else min(cands)
    elif core_tokens % align or tile_tokens % core_tokens:
        raise EmbedConfigError(
            f"core_tokens={core_tokens} must divide the tile's {tile_tokens} tokens and be a multiple of "
            f"{align} (the fewest {token_m:g} m tokens that are whole pixels at GSDs {sorted(set(gsds))})"
        )
    if margin_tokens is None:
        margin_tokens = align * math.ceil(2 / align)
    elif margin_tokens % align:
        raise EmbedConfigError(
            f"margin_tokens={margin_tokens} must be a multiple of {align} (pixel alignment for GSDs "
            f"{sorted(set(gsds))} at {token_m:g} m tokens)"
        )
    if blend_tokens is None:
        blend_tokens = min(DEFAULT_BLEND_TOKENS, margin_tokens, core_tokens // 2)
    offset = blend_offset(core_tokens, blend_tokens, align)
    return ChipLayout(tile_tokens, core_tokens, margin_tokens, token_m, blend_tokens, offset)

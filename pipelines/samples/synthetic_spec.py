"""What a synthetic sample catalog holds: :class:`SyntheticSpec` and the per-collection product profiles."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from types import MappingProxyType

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The spec

DEFAULT_COLLECTIONS: tuple[str, ...] = ("sentinel-2-l2a", "landsat-c2-l2", "hls2-s30", "hls2-l30")


@dataclass(frozen=True)
class _Profile:
    id_prefix: str
    platforms: tuple[str, str]
    instruments: tuple[str, ...]
    constellation: str | None
    mask_gsd: float
    mask_kind: str  # scl | qa_pixel | fmask
    day_offset: int  # Landsat-derived products fly 3 days after the Sentinel-2 ones
    acq_time: time
    grid_offset: float  # Landsat WRS grids sit 15 m off the 30 m multiples; MGRS (S2, HLS) grids do not


_PROFILES: Mapping[str, _Profile] = MappingProxyType(
    {
        "sentinel-2-l2a": _Profile(
            "S2",
            ("sentinel-2a", "sentinel-2b"),
            ("msi",),
            "sentinel-2",
            20.0,
            "scl",
            0,
            time(10, 27, 31),
            0.0,
        ),
        "landsat-c2-l2": _Profile(
            "LC",
            ("landsat-8", "landsat-9"),
            ("oli", "tirs"),
            None,
            30.0,
            "qa_pixel",
            3,
            time(10, 21, 5),
            15.0,
        ),
        "hls2-s30": _Profile(
            "HLSS30", ("sentinel-2a", "sentinel-2b"), ("msi",), None, 30.0, "fmask", 0, time(10, 27, 31), 0.0
        ),
        "hls2-l30": _Profile(
            "HLSL30",
            ("landsat-8", "landsat-9"),
            ("oli", "tirs"),
            None,
            30.0,
            "fmask",
            3,
            time(10, 21, 5),
            0.0,
        ),
    }
)


SUPPORTED_COLLECTIONS: tuple[str, ...] = tuple(_PROFILES)


@dataclass(frozen=True)
class SyntheticSpec:
    """What :func:`generate_items` makes. All randomness derives from ``seed``.

    One scene per (UTM zone, date, collection). The scenes of the different zones sit side by side
    around (``center_lon``, ``center_lat``) and overlap by half, across the zone boundary at 6°E.
    """

    seed: int = 0
    scene_size_m: float = 3840.0  # 10/20/60 m grids are 384/192/64 px; 30 m grids 128 px
    n_dates: int = 3
    collections: tuple[str, ...] = DEFAULT_COLLECTIONS
    epsg_codes: tuple[int, ...] = (32631, 32632)
    center_lon: float = 6.0
    center_lat: float = 45.0
    start_date: date = date(2023, 6, 1)
    revisit_days: int = 10
    cloud_fraction: float = 0.15
    # date indices (Python-style; out-of-range ones ignored) whose items get a swath-edge no-data wedge
    nodata_swath_dates: tuple[int, ...] = (1,)
    nodata_swath_fraction: float = 0.3
    # Sentinel-2 date index (Python-style) whose item in the first zone is baseline 05.00 *without*
    # earthsearch:boa_offset_applied, so its DNs carry the +1000 offset; None: no such item.
    raw_offset_date: int | None = -1
    catalog: str = "sample"

    def __post_init__(self) -> None:
        if self.scene_size_m <= 0 or not math.isclose(
            self.scene_size_m / 60.0, round(self.scene_size_m / 60.0)
        ):
            raise ValueError(f"scene_size_m must be a positive multiple of 60 m, got {self.scene_size_m}")
        if self.n_dates < 1:
            raise ValueError(f"n_dates must be >= 1, got {self.n_dates}")
        if not self.collections:
            raise ValueError("collections is empty")
        unknown = [c for c in self.collections if c not in _PROFILES]
        if unknown:
            raise ValueError(
                f"no synthetic generator for {unknown}; supported: {', '.join(SUPPORTED_COLLECTIONS)}"
            )
        bad = [e for e in self.epsg_codes if not (32601 <= e <= 32660 or 32701 <= e <= 32760)]
        if not self.epsg_codes or bad:
            raise ValueError(f"epsg_codes must be WGS84 UTM zones (326xx/327xx), got {self.epsg_codes}")
        if not 0.0 <= self.cloud_fraction < 1.0:
            raise ValueError(f"cloud_fraction must be in [0, 1), got {self.cloud_fraction}")
        if not 0.0 <= self.nodata_swath_fraction < 1.0:
            raise ValueError(f"nodata_swath_fraction must be in [0, 1), got {self.nodata_swath_fraction}")
        if self.raw_offset_date is not None and not -self.n_dates <= self.raw_offset_date < self.n_dates:
            raise ValueError(f"raw_offset_date {self.raw_offset_date} is outside the {self.n_dates} dates")
        if self.revisit_days < 1:
            raise ValueError(f"revisit_days must be >= 1, got {self.revisit_days}")

    @property
    def fixed_timestamp(self) -> str:
        """``created``/``updated`` of every synthetic item: fixed, derived from the seed."""
        stamp = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=self.seed % 86400)
        return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")

    def dates(self, collection: str) -> list[datetime]:
        prof = _PROFILES[collection]
        return [
            datetime.combine(
                self.start_date + timedelta(days=i * self.revisit_days + prof.day_offset), prof.acq_time, UTC
            )
            for i in range(self.n_dates)
        ]

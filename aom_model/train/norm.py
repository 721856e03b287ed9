"""Per-band normalisation statistics, keyed ``<sensor>/<band>``, computed from training chips only."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aom_model.train.chips import ChipIndex, ChipReader, NoValidChipsError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Normalisation statistics


@dataclass
class NormStats:
    """Per band key (``<sensor>/<band>``) mean / std of valid reflectance."""

    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    wavelength_nm: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "per-band-key",
            "bands": {
                k: {
                    "mean": self.mean[k],
                    "std": self.std[k],
                    "count": int(self.count.get(k, 0)),
                    "wavelength_nm": self.wavelength_nm.get(k),
                }
                for k in sorted(self.mean)
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> NormStats:
        out = cls()
        for k, v in ((d or {}).get("bands") or {}).items():
            out.mean[k] = float(v["mean"])
            out.std[k] = float(v["std"])
            out.count[k] = int(v.get("count", 0))
            if v.get("wavelength_nm") is not None:
                out.wavelength_nm[k] = float(v["wavelength_nm"])
        return out

    def merged_with(self, other: NormStats) -> NormStats:
        """Entries of ``self`` win; keys only in ``other`` are added (fine-tuning on new bands)."""
        out = NormStats(dict(other.mean), dict(other.std), dict(other.count), dict(other.wavelength_nm))
        out.mean.update(self.mean)
        out.std.update(self.std)
        out.count.update(self.count)
        out.wavelength_nm.update(self.wavelength_nm)
        return out

    def arrays(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        missing = [k for k in keys if k not in self.mean]
        if missing:
            raise KeyError(f"no normalisation statistics for bands {missing}")
        return (
            np.array([self.mean[k] for k in keys], dtype=np.float32),
            np.array([self.std[k] for k in keys], dtype=np.float32),
        )


# ---------------------------------------------------------------------------------------------
# Statistics


def compute_norm_stats(
    index: ChipIndex, seed: int = 0, split: str = "train", known: NormStats | None = None
) -> NormStats:
    """Mean/std per band key from up to ``stats_max_chips`` seeded chips (valid pixels only).

    Keys present in ``known`` are kept as they are (fine-tuning reuses the checkpoint's statistics);
    only missing keys are estimated. Same inputs -> same statistics on every rank.
    """
    keys = index.band_keys()
    todo = [k for k in keys if known is None or k not in known.mean]
    stats = NormStats()
    if todo:
        ids = index.split_ids(split) or index.split_ids("all")
        rng = np.random.default_rng([seed, 0x57A7])
        # make sure every source layout is represented: round-robin over sources, then shuffle
        by_src: dict[int, list[int]] = {}
        for i in ids:
            by_src.setdefault(index.chips[i].source, []).append(i)
        pools = [list(np.array(v)[rng.permutation(len(v))]) for _, v in sorted(by_src.items())]
        chosen: list[int] = []
        while len(chosen) < index.chip.stats_max_chips and any(pools):
            for p in pools:
                if p and len(chosen) < index.chip.stats_max_chips:
                    chosen.append(int(p.pop()))
        reader = ChipReader(index)
        s1: dict[str, float] = {}
        s2: dict[str, float] = {}
        cnt: dict[str, int] = {}
        for cid in chosen:
            c = index.chips[cid]
            src = index.sources[c.source]
            try:
                arrays = reader.read_chip(c.source, c.t, c.row, c.col)
            except Exception as e:
                log.warning("statistics: chip %d unreadable (%s); skipped", cid, e)
                continue
            for g, a in zip(src.groups, arrays):
                for key, band in zip(g.band_keys, a):
                    if key not in todo:
                        continue
                    v = band[np.isfinite(band)].astype(np.float64)
                    if v.size > index.chip.stats_pixels_per_band:
                        v = rng.choice(v, size=index.chip.stats_pixels_per_band, replace=False)
                    s1[key] = s1.get(key, 0.0) + float(v.sum())
                    s2[key] = s2.get(key, 0.0) + float((v * v).sum())
                    cnt[key] = cnt.get(key, 0) + int(v.size)
        for key in todo:
            n = cnt.get(key, 0)
            if n < 2:
                raise NoValidChipsError(f"normalisation statistics: no valid pixels for band {key}")
            mean = s1[key] / n
            var = max(s2[key] / n - mean * mean, 0.0)
            stats.mean[key] = mean
            stats.std[key] = max(math.sqrt(var), 1e-4)
            stats.count[key] = n
            stats.wavelength_nm[key] = index.band_meta[key][0]
    return stats if known is None else known.merged_with(stats)

"""Training data: chips sampled from cube stores across sensors and GSDs.

Pipeline
--------
1. ``ChipIndex.build(urls)`` reads metadata of every complete tile of every store (local or any
   fsspec URL), validates band metadata (a band name must mean one wavelength/FWHM everywhere),
   lays a non-overlapping chip grid (``chip_m`` square, a multiple of every GSD) over each
   (tile, collection) and, per acquisition, measures the valid-pixel fraction of every chip from the
   coarsest group (one cheap read). Chips below ``min_valid_frac`` (cloud, swath edge) are skipped
   and counted. Each chip gets a *partner* when another collection of the same tile is coarser
   (e.g. Landsat 30 m for Sentinel-2 10 m): the nearest-in-time valid acquisition of the same area.
   Unreadable groups (corrupt chunk, bad record) are skipped and counted; bad metadata raises
   ``CubeDataError``; no valid chip at all raises ``NoValidChipsError`` with the counts.
2. ``compute_norm_stats`` -> ``NormStats``: per band key ``<sensor>/<band>`` mean/std of valid
   reflectance from a seeded sample of chips; saved in the checkpoint, applied in the dataset.
3. ``epoch_plan``: per epoch, chips of one *layout* (collection, its groups and bands, partner
   layout) are permuted and cut into micro-batches, and all micro-batches are shuffled, seeded by
   (seed, epoch). A chip appears at most once per epoch. Micro-batch ``i`` of an epoch is a pure
   function of (seed, epoch, i): rank ``r`` of ``W`` takes ``i = p * W + r``, so the global batch is
   the same for any world size / accumulation split, and resuming at position ``p`` is exact.
4. ``ChipBatchDataset[i]`` reads and collates micro-batch ``i`` into ``BandBatch`` views:
   hierarchical channel sampling (stage 1 per micro-batch: which GSD groups are kept, at least one;
   stage 2 per sample: a random non-empty band subset of every kept group, or all bands), masks
   (NaN pixel -> ``pixel_valid`` False; dropped band -> ``band_valid`` False; nothing zero-filled),
   and the coarse view for the alignment loss (the partner chip, else the chip area-averaged
   ``coarse_factor`` x). A chip that fails to read is dropped from its batch and counted.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from aom_model.cube_reader import CubeDataError, CubeStore, GroupMeta, group_meta, read_window
from aom_model.inputs import BandBatch, BandGroup

log = logging.getLogger(__name__)

_NS_PER_DAY = 86_400 * 10**9


class NoValidChipsError(CubeDataError):
    """The cube stores hold no chip with enough valid pixels."""


@dataclass(frozen=True)
class ChipConfig:
    chip_m: float = 480.0  # square chip side (m); a multiple of every GSD used
    min_valid_frac: float = 0.5  # skip chips with a smaller valid-pixel fraction
    group_keep_prob: float = 0.75  # stage 1: keep a GSD group (per micro-batch; >= 1 group kept)
    all_bands_prob: float = 0.3  # stage 2: probability that a sample keeps every band of its groups
    coarse_view: bool = True  # produce a second, coarser view for the alignment loss
    cross_sensor: bool = True  # coarse view from a coarser collection of the same tile when present
    coarse_factor: int = 2  # otherwise: the chip area-averaged by this factor
    max_partner_days: float = 90.0  # partner acquisition at most this far in time
    val_fraction: float = 0.0  # chip locations held out (stable hash of tile/collection-free location)
    stats_max_chips: int = 128  # chips read for the normalisation statistics
    stats_pixels_per_band: int = 4096  # valid pixels sampled per band per chip

    def __post_init__(self) -> None:
        if not (self.chip_m > 0 and math.isfinite(self.chip_m)):
            raise ValueError(f"chip_m must be > 0, got {self.chip_m}")
        if not 0.0 <= self.min_valid_frac <= 1.0:
            raise ValueError("min_valid_frac must be in [0, 1]")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")
        if self.coarse_factor < 1:
            raise ValueError("coarse_factor must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChipConfig:
        return cls(**dict(d))


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
# Index


@dataclass(frozen=True)
class Source:
    """One (store, tile, collection) with its groups sorted finest first and common acquisitions."""

    store: int
    tile_id: str
    collection: str
    sensor: str
    groups: tuple[GroupMeta, ...]
    time_index: tuple[tuple[int, ...], ...]  # per common acquisition: the time index in each group
    times: tuple[int, ...]  # common acquisition times (ns)
    n_rows: int
    n_cols: int

    @property
    def layout(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return tuple((g.gsd_label, g.band_keys) for g in self.groups)

    @property
    def finest_gsd(self) -> float:
        return self.groups[0].gsd_m


@dataclass(frozen=True)
class Chip:
    source: int
    t: int  # index into Source.times
    row: int
    col: int
    valid_frac: float
    partner: tuple[int, int] | None = None  # (source, t) of the coarse-view chip at the same place


@dataclass
class IndexCounts:
    stores: int = 0
    tiles_complete: int = 0
    tiles_empty: int = 0
    tiles_without_record: int = 0
    groups_unreadable: int = 0
    groups_unusable_gsd: int = 0
    chips_total: int = 0
    chips_skipped_invalid: int = 0
    chips_valid: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _location_split(tile_id: str, row: int, col: int, val_fraction: float) -> str:
    if val_fraction <= 0:
        return "train"
    h = zlib.crc32(f"{tile_id}:{row}:{col}".encode()) / 2**32
    return "val" if h < val_fraction else "train"


@dataclass
class ChipIndex:
    urls: tuple[str, ...]
    storage_options: dict[str, Any]
    chip: ChipConfig
    sources: list[Source]
    chips: list[Chip]
    counts: IndexCounts
    band_meta: dict[str, tuple[float, float]]  # band key -> (wavelength_nm, fwhm_nm)

    @classmethod
    def build(
        cls,
        urls: Sequence[str],
        storage_options: Mapping[str, Any] | None = None,
        chip: ChipConfig | None = None,
    ) -> ChipIndex:
        chip = chip or ChipConfig()
        if not urls:
            raise CubeDataError("no cube store given")
        counts = IndexCounts(stores=len(urls))
        sources: list[Source] = []
        chips: list[Chip] = []
        band_meta: dict[str, tuple[float, float]] = {}
        band_where: dict[str, str] = {}
        for si, url in enumerate(urls):
            store = CubeStore.open(url, storage_options)
            complete = store.complete_tiles()
            counts.tiles_complete += len(complete)
            counts.tiles_empty += len(store.empty_tiles())
            zstore = store.zarr_store()
            for tile_id in complete:
                tile_sources = _tile_sources(store, si, tile_id, zstore, chip, counts)
                for src in tile_sources:
                    for g in src.groups:
                        for key, wl, fw in zip(g.band_keys, g.wavelength_nm, g.fwhm_nm):
                            where = f"{store!r} {g.tile_id}/{g.collection}/{g.gsd_label}"
                            if key in band_meta:
                                wl0, fw0 = band_meta[key]
                                if abs(wl0 - wl) > 0.5 or abs(fw0 - fw) > 0.5:
                                    raise CubeDataError(
                                        f"mismatched band metadata for {key}: {wl} nm / FWHM {fw} nm in "
                                        f"{where} but {wl0} nm / FWHM {fw0} nm in {band_where[key]}"
                                    )
                            else:
                                band_meta[key] = (wl, fw)
                                band_where[key] = where
                # valid fractions per (source, t, row, col)
                fracs: dict[int, np.ndarray] = {}
                base = len(sources)
                for k, src in enumerate(tile_sources):
                    try:
                        fracs[base + k] = _valid_fractions(store, zstore, src, chip.chip_m)
                    except Exception as e:  # corrupt chunk / unreadable: skip and count
                        log.warning("%r %s/%s: unreadable (%s); skipped", store, tile_id, src.collection, e)
                        counts.groups_unreadable += len(src.groups)
                        fracs[base + k] = np.zeros((len(src.times), src.n_rows, src.n_cols))
                sources.extend(tile_sources)
                for k in range(len(tile_sources)):
                    s_idx = base + k
                    src = sources[s_idx]
                    fr = fracs[s_idx]
                    partner_src = (
                        _partner_source(sources, base, len(tile_sources), s_idx)
                        if chip.cross_sensor
                        else None
                    )
                    for t in range(len(src.times)):
                        for r in range(src.n_rows):
                            for c in range(src.n_cols):
                                counts.chips_total += 1
                                v = float(fr[t, r, c])
                                if v < chip.min_valid_frac or v <= 0.0:
                                    counts.chips_skipped_invalid += 1
                                    continue
                                partner: tuple[int, int] | None = None
                                if partner_src is not None:
                                    pt = _partner_time(
                                        sources[partner_src], fracs[partner_src], src.times[t], r, c, chip
                                    )
                                    partner = None if pt is None else (partner_src, pt)
                                chips.append(Chip(s_idx, t, r, c, v, partner))
        counts.chips_valid = len(chips)
        if not chips:
            raise NoValidChipsError(
                f"no valid chips in {len(urls)} cube store(s): {counts.to_dict()} "
                f"(chip_m={chip.chip_m}, min_valid_frac={chip.min_valid_frac})"
            )
        return cls(tuple(urls), dict(storage_options or {}), chip, sources, chips, counts, band_meta)

    # ------------------------------------------------------------------------------------------
    def layout_key(self, c: Chip) -> tuple[Any, ...]:
        src = self.sources[c.source]
        partner = None if c.partner is None else self.sources[c.partner[0]].layout
        return (src.collection, src.layout, partner)

    def split_ids(self, split: str) -> list[int]:
        if split == "all":
            return list(range(len(self.chips)))
        out = []
        for i, c in enumerate(self.chips):
            src = self.sources[c.source]
            if _location_split(src.tile_id, c.row, c.col, self.chip.val_fraction) == split:
                out.append(i)
        return out

    def band_keys(self) -> list[str]:
        return sorted(self.band_meta)


def _tile_sources(
    store: CubeStore, si: int, tile_id: str, zstore: Any, chip: ChipConfig, counts: IndexCounts
) -> list[Source]:
    metas: dict[str, list[GroupMeta]] = {}
    for coll, gsd_label in store.list_groups(tile_id):
        try:
            ds = store.open_group(tile_id, coll, gsd_label, zstore)
        except Exception as e:
            log.warning("%r %s/%s/%s: unreadable group (%s); skipped", store, tile_id, coll, gsd_label, e)
            counts.groups_unreadable += 1
            continue
        meta = group_meta(tile_id, coll, gsd_label, ds, where=f"{store!r}: ")
        ratio = chip.chip_m / meta.gsd_m
        if abs(ratio - round(ratio)) > 1e-6:
            log.info(
                "%s/%s/%s: GSD %g m does not divide chip_m; skipped", tile_id, coll, gsd_label, meta.gsd_m
            )
            counts.groups_unusable_gsd += 1
            continue
        metas.setdefault(coll, []).append(meta)
    out = []
    for coll in sorted(metas):
        groups = sorted(metas[coll], key=lambda g: (g.gsd_m, g.gsd_label))
        g0 = groups[0]
        sensors = {g.sensor for g in groups}
        if len(sensors) != 1:
            raise CubeDataError(f"{store!r} {tile_id}/{coll}: groups disagree on sensor: {sorted(sensors)}")
        for g in groups[1:]:
            if (
                abs(g.x0 - g0.x0) > g.gsd_m
                or abs(g.y0 - g0.y0) > g.gsd_m
                or abs(g.extent_m[0] - g0.extent_m[0]) > g.gsd_m
                or abs(g.extent_m[1] - g0.extent_m[1]) > g.gsd_m
            ):
                raise CubeDataError(
                    f"{store!r} {tile_id}/{coll}: group {g.gsd_label} covers a different extent than "
                    f"{g0.gsd_label} ({g.x0}, {g.y0}, {g.extent_m}) vs ({g0.x0}, {g0.y0}, {g0.extent_m})"
                )
        common = sorted(set(g0.times).intersection(*[set(g.times) for g in groups[1:]]))
        tindex = tuple(tuple(g.times.index(t) for g in groups) for t in common)
        ext_h = min(g.extent_m[0] for g in groups)
        ext_w = min(g.extent_m[1] for g in groups)
        n_rows, n_cols = int(ext_h // chip.chip_m + 1e-9), int(ext_w // chip.chip_m + 1e-9)
        if n_rows < 1 or n_cols < 1 or not common:
            continue
        out.append(Source(si, tile_id, coll, g0.sensor, tuple(groups), tindex, tuple(common), n_rows, n_cols))
    return out


def _valid_fractions(store: CubeStore, zstore: Any, src: Source, chip_m: float) -> np.ndarray:
    """[T, rows, cols] fraction of pixels valid in every band of the coarsest group."""
    g = src.groups[-1]
    ds = store.open_group(src.tile_id, src.collection, g.gsd_label, zstore)
    n = round(chip_m / g.gsd_m)
    out = np.zeros((len(src.times), src.n_rows, src.n_cols))
    for k, tidx in enumerate(src.time_index):
        arr = read_window(ds, tidx[-1], 0, 0, src.n_rows * n, src.n_cols * n)  # [C, H, W]
        valid = np.isfinite(arr).all(axis=0)
        out[k] = valid.reshape(src.n_rows, n, src.n_cols, n).mean(axis=(1, 3))
    return out


def _partner_source(sources: list[Source], base: int, count: int, s_idx: int) -> int | None:
    """A coarser collection of the same tile with the same chip grid (the coarsest such)."""
    src = sources[s_idx]
    best = None
    for j in range(base, base + count):
        o = sources[j]
        if j == s_idx or o.finest_gsd <= src.finest_gsd or (o.n_rows, o.n_cols) != (src.n_rows, src.n_cols):
            continue
        if best is None or (o.finest_gsd, o.collection) < (
            sources[best].finest_gsd,
            sources[best].collection,
        ):
            best = j
    return best


def _partner_time(psrc: Source, pfrac: np.ndarray, t_ns: int, r: int, c: int, chip: ChipConfig) -> int | None:
    best, best_dt = None, None
    for k, tk in enumerate(psrc.times):
        if pfrac[k, r, c] < chip.min_valid_frac or pfrac[k, r, c] <= 0:
            continue
        dt = abs(tk - t_ns)
        if dt <= chip.max_partner_days * _NS_PER_DAY and (best_dt is None or dt < best_dt):
            best, best_dt = k, dt
    return best


# ---------------------------------------------------------------------------------------------
# Epoch plan


@dataclass(frozen=True)
class BatchSpec:
    chips: tuple[int, ...]  # indices into ChipIndex.chips


def epoch_plan(
    index: ChipIndex,
    chip_ids: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
    drop_remainder: bool = True,
) -> list[BatchSpec]:
    """Micro-batches of one epoch: layout-homogeneous, each chip at most once, seeded by (seed, epoch).
    ``drop_remainder=False`` (evaluation) keeps each layout's last, smaller batch."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    by_layout: dict[Any, list[int]] = {}
    for i in chip_ids:
        by_layout.setdefault(index.layout_key(index.chips[i]), []).append(i)
    batches: list[BatchSpec] = []
    for key in sorted(by_layout, key=repr):
        ids = np.array(by_layout[key])
        ids = ids[rng.permutation(len(ids))]
        stop = len(ids) if not drop_remainder else len(ids) - batch_size + 1
        for s in range(0, max(stop, 0), batch_size):
            batches.append(BatchSpec(tuple(int(v) for v in ids[s : s + batch_size])))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


# ---------------------------------------------------------------------------------------------
# Samples and collation


@dataclass
class SampleView:
    """One sample of one view: per kept group (pixels [C, H, W] normalised, NaN = invalid, band mask)."""

    pixels: list[np.ndarray]
    band_valid: list[np.ndarray]
    gsd_m: list[float]
    wavelength_nm: list[np.ndarray]
    fwhm_nm: list[np.ndarray]


@dataclass
class TrainBatch:
    """One micro-batch: native view, optional coarse view, bookkeeping."""

    index: int  # global micro-batch index in its epoch
    native: BandBatch | None  # None when every chip of the batch failed to read
    coarse: BandBatch | None
    chip_ids: tuple[int, ...]
    skipped_chips: int = 0

    @property
    def size(self) -> int:
        return 0 if self.native is None else self.native.batch_size


def collate_views(views: Sequence[SampleView]) -> BandBatch:
    groups = []
    for gi in range(len(views[0].pixels)):
        px = torch.from_numpy(np.stack([v.pixels[gi] for v in views]))  # [B, C, H, W]
        finite = torch.isfinite(px)
        bv = torch.from_numpy(np.stack([v.band_valid[gi] for v in views]))
        groups.append(
            BandGroup(
                pixels=px,
                wavelength_nm=torch.from_numpy(np.stack([v.wavelength_nm[gi] for v in views])).float(),
                fwhm_nm=torch.from_numpy(np.stack([v.fwhm_nm[gi] for v in views])).float(),
                gsd_m=torch.tensor([v.gsd_m[gi] for v in views], dtype=torch.float32),
                band_valid=bv,
                pixel_valid=None if bool(finite.all()) else finite,
            )
        )
    return BandBatch(tuple(groups))


def coarsen(a: np.ndarray, f: int) -> np.ndarray:
    """[C, H, W] area mean over valid pixels of f x f blocks; NaN where a block has none."""
    if f == 1:
        return a
    c, h, w = a.shape
    b = a.reshape(c, h // f, f, w // f, f)
    valid = np.isfinite(b)
    cnt = valid.sum(axis=(2, 4))
    s = np.where(valid, b, 0.0).sum(axis=(2, 4))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan).astype(np.float32)


class ChipReader:
    """Reads chips of a ``ChipIndex``; open Zarr handles are cached per process, never pickled."""

    def __init__(self, index: ChipIndex) -> None:
        self.index = index
        self._cache: dict[Any, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    # -- reading -------------------------------------------------------------------------------
    def _dataset(self, src: Source, g: GroupMeta) -> Any:
        key = (src.store, src.tile_id, src.collection, g.gsd_label)
        ds = self._cache.get(key)
        if ds is None:
            skey = ("store", src.store)
            if skey not in self._cache:
                store = CubeStore(self.index.urls[src.store], self.index.storage_options)
                self._cache[skey] = (store, store.zarr_store())
            store, zstore = self._cache[skey]
            ds = store.open_group(src.tile_id, src.collection, g.gsd_label, zstore)
            self._cache[key] = ds
        return ds

    def read_chip(self, source: int, t: int, row: int, col: int) -> list[np.ndarray]:
        """Raw reflectance [C_g, H_g, W_g] per group of a chip (NaN = invalid)."""
        src = self.index.sources[source]
        chip_m = self.index.chip.chip_m
        out = []
        for gi, g in enumerate(src.groups):
            n = round(chip_m / g.gsd_m)
            arr = read_window(self._dataset(src, g), src.time_index[t][gi], row * n, col * n, n, n)
            if arr.shape[0] != len(g.bands):
                raise CubeDataError(f"{src.tile_id}/{src.collection}/{g.gsd_label}: band count changed")
            out.append(arr)
        return out


class ChipBatchDataset(Dataset[TrainBatch]):
    """Map-style dataset over the micro-batches of one epoch (item ``i`` = micro-batch ``i``).

    ``augment=False`` keeps every group and band (evaluation); ``with_coarse=False`` skips the
    second view. Open Zarr handles are cached per process and never pickled to workers.
    """

    def __init__(
        self,
        index: ChipIndex,
        norm: NormStats,
        batch_size: int,
        seed: int,
        split: str = "train",
        augment: bool = True,
        with_coarse: bool | None = None,
        epoch: int = 0,
        drop_remainder: bool = True,
    ) -> None:
        self.index = index
        self.norm = norm
        self.batch_size = batch_size
        self.seed = seed
        self.split = split
        self.drop_remainder = drop_remainder
        self.augment = augment
        self.with_coarse = index.chip.coarse_view if with_coarse is None else with_coarse
        self.reader = ChipReader(index)
        self.chip_ids = index.split_ids(split)
        if not self.chip_ids:
            raise NoValidChipsError(f"no valid chips in split {split!r}: {index.counts.to_dict()}")
        self.epoch = -1
        self.plan: list[BatchSpec] = []
        self.set_epoch(epoch)
        missing = [k for k in index.band_keys() if k not in norm.mean]
        if missing:
            raise CubeDataError(f"no normalisation statistics for bands {missing}")

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.plan = epoch_plan(
                self.index, self.chip_ids, self.batch_size, self.seed, epoch, self.drop_remainder
            )
            if not self.plan:
                raise NoValidChipsError(
                    f"split {self.split!r} has {len(self.chip_ids)} valid chips but no layout has a full "
                    f"micro-batch of {self.batch_size}; lower batch_size or add cubes"
                )

    def __len__(self) -> int:
        return len(self.plan)

    def _normalise(self, src: Source, arrays: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for g, a in zip(src.groups, arrays):
            mean, std = self.norm.arrays(g.band_keys)
            out.append(((a - mean[:, None, None]) / std[:, None, None]).astype(np.float32))
        return out

    def _view(
        self,
        src: Source,
        arrays: list[np.ndarray],
        keep_groups: Sequence[int],
        rng: np.random.Generator,
        factor: int = 1,
    ) -> SampleView:
        px, bv, gsd, wl, fw = [], [], [], [], []
        for gi in keep_groups:
            g = src.groups[gi]
            a = arrays[gi]
            c = a.shape[0]
            mask = np.ones(c, dtype=bool)
            if self.augment and rng.random() >= self.index.chip.all_bands_prob:
                k = int(rng.integers(1, c + 1))
                mask = np.zeros(c, dtype=bool)
                mask[rng.choice(c, size=k, replace=False)] = True
            a = coarsen(a, factor) if factor > 1 else a
            if not mask.all():
                a = a.copy()
                a[~mask] = np.nan  # dropped bands carry no data (band_valid False; no token)
            px.append(a)
            bv.append(mask)
            gsd.append(g.gsd_m * factor)
            wl.append(np.array(g.wavelength_nm, dtype=np.float32))
            fw.append(np.array(g.fwhm_nm, dtype=np.float32))
        return SampleView(px, bv, gsd, wl, fw)

    def _keep_groups(self, src: Source, rng: np.random.Generator) -> list[int]:
        n = len(src.groups)
        if not self.augment or n == 1:
            return list(range(n))
        keep = [gi for gi in range(n) if rng.random() < self.index.chip.group_keep_prob]
        return keep or [int(rng.integers(n))]

    def __getitem__(self, i: int) -> TrainBatch:
        spec = self.plan[i]
        rng = np.random.default_rng([self.seed, self.epoch, i, 1])
        chip0 = self.index.chips[spec.chips[0]]
        src0 = self.index.sources[chip0.source]
        keep_native = self._keep_groups(src0, rng)
        partner_src = None if chip0.partner is None else self.index.sources[chip0.partner[0]]
        keep_coarse: list[int] | None = None
        factor = 1
        if self.with_coarse:
            if partner_src is not None:
                keep_coarse = self._keep_groups(partner_src, rng)
            else:
                f = self.index.chip.coarse_factor
                sizes = [round(self.index.chip.chip_m / g.gsd_m) for g in src0.groups]
                if f > 1 and all(s % f == 0 for s in sizes):
                    keep_coarse, factor = self._keep_groups(src0, rng), f
        natives, coarses, ids = [], [], []
        skipped = 0
        for cid in spec.chips:
            c = self.index.chips[cid]
            src = self.index.sources[c.source]
            srng = np.random.default_rng([self.seed, self.epoch, i, 2, cid])
            try:
                arrays = self._normalise(src, self.reader.read_chip(c.source, c.t, c.row, c.col))
                native = self._view(src, arrays, keep_native, srng)
                coarse = None
                if keep_coarse is not None:
                    if c.partner is not None and partner_src is not None:
                        psrc = self.index.sources[c.partner[0]]
                        parr = self._normalise(
                            psrc, self.reader.read_chip(c.partner[0], c.partner[1], c.row, c.col)
                        )
                        coarse = self._view(psrc, parr, keep_coarse, srng)
                    else:
                        coarse = self._view(src, arrays, keep_coarse, srng, factor)
            except Exception as e:  # corrupt chunk, network error: drop this chip, count it
                log.warning(
                    "chip %d (%s/%s t=%d r=%d c=%d) unreadable: %s",
                    cid,
                    src.tile_id,
                    src.collection,
                    c.t,
                    c.row,
                    c.col,
                    e,
                )
                skipped += 1
                continue
            natives.append(native)
            if coarse is not None:
                coarses.append(coarse)
            ids.append(cid)
        if not natives:
            return TrainBatch(i, None, None, tuple(ids), skipped)
        nb = collate_views(natives)
        cb = collate_views(coarses) if keep_coarse is not None and len(coarses) == len(natives) else None
        return TrainBatch(i, nb, cb, tuple(ids), skipped)


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


# ---------------------------------------------------------------------------------------------
# Sampler and loader


class RankSampler(Sampler[int]):
    """Global micro-batch indices of one rank: ``p * world + rank`` for ``p`` in [start, n // world)."""

    def __init__(self, n_batches: int, rank: int = 0, world: int = 1, start: int = 0) -> None:
        self.n_local = n_batches // world
        self.rank, self.world, self.start = rank, world, start

    def __len__(self) -> int:
        return max(0, self.n_local - self.start)

    def __iter__(self) -> Iterator[int]:
        for p in range(self.start, self.n_local):
            yield p * self.world + self.rank


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _identity(x: Any) -> Any:
    return x


def make_loader(
    dataset: ChipBatchDataset,
    rank: int = 0,
    world: int = 1,
    start: int = 0,
    num_workers: int = 0,
    prefetch_factor: int = 2,
) -> DataLoader[TrainBatch]:
    """Loader over this rank's micro-batches of the dataset's current epoch, from local position ``start``.
    Workers only change speed, never content or order."""
    sampler = RankSampler(len(dataset), rank, world, start)
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs = {
            "prefetch_factor": prefetch_factor,
            "worker_init_fn": _worker_init,
            "persistent_workers": False,
        }
    return DataLoader(
        dataset, batch_size=None, sampler=sampler, num_workers=num_workers, collate_fn=_identity, **kwargs
    )

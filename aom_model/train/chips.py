"""The chip index: which (tile, time, window) chips of the cube stores are valid, with their partners.

The index is built once from completion records and cloud/valid fractions; chips are split into train and
validation by location (never by time), so a validation chip's ground is never seen in training.
Stores are read through the :class:`~aom_model.train.cube_reader.CubeReader` protocol: the index keeps
the caller's ``opener`` and every process (data-loader workers included) reopens stores with it.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aom_model.train.cube_reader import CubeDataError, CubeReader, GroupInfo, RawReader, StoreOpener

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
    window_blocks: int = 4  # shuffle buffer: (tile, time) blocks of a stream mixed into micro-batches
    streams: int = 8  # data streams of the epoch plan; the world size must divide min(streams, blocks)

    def __post_init__(self) -> None:
        if not (self.chip_m > 0 and math.isfinite(self.chip_m)):
            raise ValueError(f"chip_m must be > 0, got {self.chip_m}")
        if not 0.0 <= self.min_valid_frac <= 1.0:
            raise ValueError("min_valid_frac must be in [0, 1]")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")
        if self.coarse_factor < 1:
            raise ValueError("coarse_factor must be >= 1")
        if self.window_blocks < 1 or self.streams < 1:
            raise ValueError("window_blocks and streams must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChipConfig:
        return cls(**dict(d))


# ---------------------------------------------------------------------------------------------
# Index


@dataclass(frozen=True)
class Source:
    """One (store, tile, collection) with its groups sorted finest first and common acquisitions."""

    store: int
    tile_id: str
    collection: str
    sensor: str
    groups: tuple[GroupInfo, ...]
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
    opener: StoreOpener  # (url, storage_options) -> CubeReader; pickled to data-loader workers

    @classmethod
    def build(
        cls,
        urls: Sequence[str],
        storage_options: Mapping[str, Any] | None = None,
        chip: ChipConfig | None = None,
        *,
        opener: StoreOpener,
    ) -> ChipIndex:
        """Index the chips of the stores at ``urls``, each opened with ``opener(url, storage_options)``
        (``pipelines.cubes.CubeStore.open``; see :mod:`pipelines.pretrain`)."""
        chip = chip or ChipConfig()
        if not urls:
            raise CubeDataError("no cube store given")
        counts = IndexCounts(stores=len(urls))
        sources: list[Source] = []
        chips: list[Chip] = []
        band_meta: dict[str, tuple[float, float]] = {}
        band_where: dict[str, str] = {}
        seen = _SeenGroups()
        for si, url in enumerate(urls):
            store = opener(url, storage_options)
            records = store.tile_records()
            complete = sorted(t for t, r in records.items() if r["status"] == "complete")
            counts.tiles_complete += len(complete)
            counts.tiles_empty += sum(1 for r in records.values() if r["status"] == "empty")
            for tile_id in complete:
                tile_sources = _tile_sources(store, si, tile_id, chip, counts, seen)
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
                        fracs[base + k] = _valid_fractions(store, src, chip.chip_m)
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
        if seen.unusable and chips:  # one line, not one per tile and group
            log.info(
                "groups of GSD %s m left out: they do not divide chip_m %g m",
                ", ".join(f"{g:g}" for g in sorted(seen.unusable)),
                chip.chip_m,
            )
        if not chips:
            problem = seen.chip_size_problem(chip.chip_m)
            if problem:
                raise NoValidChipsError(problem)
            raise NoValidChipsError(
                f"no valid chips in {len(urls)} cube store(s): {counts.to_dict()} "
                f"(chip_m={chip.chip_m}, min_valid_frac={chip.min_valid_frac})"
            )
        return cls(tuple(urls), dict(storage_options or {}), chip, sources, chips, counts, band_meta, opener)

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


@dataclass
class _SeenGroups:
    """The GSDs and tile sides of the groups an index met, to name a ``chip_m`` that fits none."""

    gsds: set[float] = field(default_factory=set)
    unusable: set[float] = field(default_factory=set)  # GSDs that do not divide chip_m
    side_m: float = 0.0  # the largest tile side of the groups (a chip must fit in one)
    usable: int = 0  # groups whose GSD divides chip_m

    def chip_size_problem(self, chip_m: float) -> str | None:
        """Why no group could be cut into chips of ``chip_m`` (a line naming the valid sizes), or
        None when the sizes were not the reason."""
        if not self.gsds:
            return None
        gsds = sorted(self.gsds)
        names = ", ".join(f"{g:g}" for g in gsds)
        either = names if len(gsds) == 1 else names.rpartition(", ")[0] + f" or {gsds[-1]:g}"
        fits = chip_m <= self.side_m + 1e-6
        if self.usable and fits:
            return None
        every = _common_multiple(gsds)
        hint = ""
        if every is not None and every <= self.side_m + 1e-6:
            example = every * max(1, min(round(ChipConfig.chip_m / every), int(self.side_m // every)))
            hint = f" (a multiple of {every:g} m, e.g. {example:g}, uses every group)"
        valid = f"give a multiple of {either} m{hint}, at most the tiles' {self.side_m:g} m side"
        if not self.usable:
            return f"chip_m (--chip-m) {chip_m:g} m is not a multiple of any GSD of the cubes ({names} m): {valid}"
        return f"chip_m (--chip-m) {chip_m:g} m is larger than the cubes' {self.side_m:g} m tiles: {valid}"


def _common_multiple(gsds: Sequence[float]) -> float | None:
    """The least common multiple of whole-metre GSDs (None when one is not whole: MODIS 463.3 m)."""
    if any(abs(g - round(g)) > 1e-6 for g in gsds):
        return None
    return float(math.lcm(*(round(g) for g in gsds)))


def _tile_sources(
    store: CubeReader,
    si: int,
    tile_id: str,
    chip: ChipConfig,
    counts: IndexCounts,
    seen: _SeenGroups | None = None,
) -> list[Source]:
    seen = seen if seen is not None else _SeenGroups()
    metas: dict[str, list[GroupInfo]] = {}
    for coll, gsd_label in store.groups(tile_id):
        try:
            ds = store.open_group(tile_id, coll, gsd_label, lazy=True)
        except Exception as e:
            log.warning("%r %s/%s/%s: unreadable group (%s); skipped", store, tile_id, coll, gsd_label, e)
            counts.groups_unreadable += 1
            continue
        meta = store.group_meta(tile_id, coll, gsd_label, ds)
        seen.gsds.add(meta.gsd_m)
        seen.side_m = max(seen.side_m, min(meta.extent_m))
        ratio = chip.chip_m / meta.gsd_m
        if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
            log.debug(
                "%s/%s/%s: GSD %g m does not divide chip_m; skipped", tile_id, coll, gsd_label, meta.gsd_m
            )
            counts.groups_unusable_gsd += 1
            seen.unusable.add(meta.gsd_m)
            continue
        seen.usable += 1
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


def _valid_fractions(store: CubeReader, src: Source, chip_m: float) -> np.ndarray:
    """[T, rows, cols] fraction of pixels valid in every band of the coarsest group."""
    g = src.groups[-1]
    ds = store.open_group(src.tile_id, src.collection, g.gsd_label, lazy=True)
    n = round(chip_m / g.gsd_m)
    out = np.zeros((len(src.times), src.n_rows, src.n_cols))
    for k, tidx in enumerate(src.time_index):
        arr = store.read_window(ds, tidx[-1], 0, 0, src.n_rows * n, src.n_cols * n)  # [C, H, W]
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


class ChipReader:
    """Reads chips and blocks of a ``ChipIndex`` through :meth:`CubeReader.open_raw`; open stores and
    groups are cached per process, never pickled (data-loader workers reopen them)."""

    def __init__(self, index: ChipIndex) -> None:
        self.index = index
        self._cache: dict[Any, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    # -- reading -------------------------------------------------------------------------------
    def _store(self, i: int) -> CubeReader:
        skey = ("store", i)
        if skey not in self._cache:
            self._cache[skey] = self.index.opener(self.index.urls[i], self.index.storage_options)
        store: CubeReader = self._cache[skey]
        return store

    def raw(self, source: int, gi: int) -> RawReader:
        """The (cached) raw reader of group ``gi`` of a source."""
        src = self.index.sources[source]
        g = src.groups[gi]
        key = (src.store, src.tile_id, src.collection, g.gsd_label)
        rg = self._cache.get(key)
        if rg is None:
            rg = self._store(src.store).open_raw(src.tile_id, src.collection, g.gsd_label)
            if rg.shape[1] != len(g.bands):
                raise CubeDataError(f"{src.tile_id}/{src.collection}/{g.gsd_label}: band count changed")
            self._cache[key] = rg
        return rg

    def read_block(self, source: int, t: int, gi: int, bands: Sequence[int]) -> np.ndarray:
        """[len(bands), rows * n, cols * n] stored values of group ``gi`` over the source's chip grid at
        acquisition ``t`` (each shard under it read once, only these bands decoded)."""
        src = self.index.sources[source]
        n = round(self.index.chip.chip_m / src.groups[gi].gsd_m)
        rg = self.raw(source, gi)
        return rg.read(src.time_index[t][gi], bands, 0, 0, src.n_rows * n, src.n_cols * n)

    def read_chip(self, source: int, t: int, row: int, col: int) -> list[np.ndarray]:
        """Raw reflectance [C_g, H_g, W_g] float32 per group of a chip (NaN = invalid)."""
        src = self.index.sources[source]
        chip_m = self.index.chip.chip_m
        out = []
        for gi, g in enumerate(src.groups):
            n = round(chip_m / g.gsd_m)
            rg = self.raw(source, gi)
            raw = rg.read(src.time_index[t][gi], range(len(g.bands)), row * n, col * n, n, n)
            out.append(rg.to_float(raw))
        return out

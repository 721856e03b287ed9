"""Training data: chips sampled from cube stores across sensors and GSDs.

Pipeline
--------
1. ``ChipIndex.build(urls, opener=...)`` reads metadata of every complete tile of every store
   (local or any fsspec URL, each read through the caller's
   :class:`~aom_model.train.cube_reader.CubeReader`), validates band metadata (a band name must
   mean one wavelength/FWHM everywhere), lays a non-overlapping chip grid (``chip_m`` square, a
   multiple of every GSD) over each (tile, collection) and, per acquisition, measures the
   valid-pixel fraction of every chip from the coarsest group (one cheap read). Chips below ``min_valid_frac`` (cloud, swath edge) are skipped
   and counted. Each chip gets a *partner* when another collection of the same tile is coarser
   (e.g. Landsat 30 m for Sentinel-2 10 m): the nearest-in-time valid acquisition of the same area.
   Unreadable groups (corrupt chunk) are skipped and counted; bad metadata or an unreadable
   completion record raises ``CubeDataError``; no valid chip at all raises ``NoValidChipsError``
   with the counts.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from aom_model.inputs import BandBatch, BandGroup
from aom_model.train.chips import ChipIndex, ChipReader, NoValidChipsError, Source
from aom_model.train.cube_reader import CubeDataError
from aom_model.train.norm import NormStats

log = logging.getLogger(__name__)


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

"""Training data: chips sampled from cube stores across sensors and GSDs, loaded at the decode floor.

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
   reflectance from a seeded sample of chips; saved in the checkpoint, applied on the device.
3. :func:`~aom_model.train.plan.build_plan`: per epoch, (tile, time) *blocks* are permuted and
   dealt to ranks; each rank mixes the chips of ``window_blocks`` consecutive blocks (a *window*)
   into layout-homogeneous micro-batches; channel sampling (stage 1: which GSD groups, per window
   and layout; stage 2: which bands, per chip) is part of the plan. A chip appears at most once
   per epoch; micro-batch ``i`` is a pure function of (seed, epoch, i), the same for every world
   size dividing the number of data streams.
4. :func:`make_loader` delivers a rank's micro-batches in order; a data-loader item is a window:
   each block of it is decoded once (only the (group, band) pairs some sample uses, each shard
   read once) and all its chips are sliced from memory. Pixels stay in the stored dtype (int16 or
   float16) until :meth:`TrainBatch.to` moves them to the device and normalises them there:
   NaN pixel -> ``pixel_valid`` False; dropped band -> ``band_valid`` False (nothing zero-filled);
   the coarse view for the alignment loss is the partner chip, else the chip area-averaged
   ``coarse_factor`` x. A block that fails to read drops its chips from their batches, counted.
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
from aom_model.train.chips import ChipIndex, ChipReader, NoValidChipsError
from aom_model.train.cube_reader import CubeDataError
from aom_model.train.norm import NormStats
from aom_model.train.plan import BatchSpec, EpochPlan, build_plan, epoch_plan, reads

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Views and batches


@dataclass
class RawView:
    """One view of a micro-batch in stored pixels, per kept group; :meth:`to_bands` normalises it
    where it is used (on the device)."""

    pixels: list[np.ndarray]
    """Per group [B, C, H, W] in the stored dtype (int16 / float16), or float32 reflectance when the
    batch mixes stores of different encodings."""
    band_valid: list[np.ndarray]
    """Per group [B, C] bool: the band was kept (stage 2); dropped bands hold no decoded data."""
    scale: list[float]
    """Per group: reflectance = stored * scale + offset."""
    offset: list[float]
    """Per group offset."""
    fill: list[float | None]
    """Per group: the integer fill value (missing), None for float storage (NaN = missing)."""
    mean: list[np.ndarray]
    """Per group [C] float32 normalisation mean."""
    std: list[np.ndarray]
    """Per group [C] float32 normalisation std."""
    gsd_m: list[float]
    """Per group: the view's GSD (native GSD x ``factor``)."""
    wavelength_nm: list[np.ndarray]
    """Per group [C] float32."""
    fwhm_nm: list[np.ndarray]
    """Per group [C] float32."""
    factor: int = 1
    """Area-average f x f blocks after normalising (the coarse view of a chip without partner)."""

    def to_bands(self, device: torch.device | str = "cpu") -> BandBatch:
        groups = []
        for gi, px in enumerate(self.pixels):
            raw = torch.from_numpy(px).to(device, non_blocking=True)  # [B, C, H, W] stored dtype
            b = raw.shape[0]
            x = raw.float()
            fill = self.fill[gi]
            valid = torch.isfinite(x) if fill is None else raw != int(fill)
            bv = torch.from_numpy(self.band_valid[gi]).to(device)  # [B, C]
            mean = torch.from_numpy(self.mean[gi]).to(device)[None, :, None, None]
            std = torch.from_numpy(self.std[gi]).to(device)[None, :, None, None]
            x = (x * self.scale[gi] + self.offset[gi] - mean) / std
            x = x.masked_fill(~(valid & bv[:, :, None, None]), float("nan"))
            if self.factor > 1:
                x = _coarsen(x, self.factor)
            finite = torch.isfinite(x)
            wl = torch.from_numpy(self.wavelength_nm[gi]).to(device)[None].expand(b, -1)
            fw = torch.from_numpy(self.fwhm_nm[gi]).to(device)[None].expand(b, -1)
            groups.append(
                BandGroup(
                    pixels=x,
                    wavelength_nm=wl.contiguous(),
                    fwhm_nm=fw.contiguous(),
                    gsd_m=torch.full((b,), self.gsd_m[gi], dtype=torch.float32, device=device),
                    band_valid=bv,
                    pixel_valid=None if bool(finite.all()) else finite,
                )
            )
        return BandBatch(tuple(groups))


def _coarsen(x: torch.Tensor, f: int) -> torch.Tensor:
    """[B, C, H, W] area mean over valid pixels of f x f blocks; NaN where a block has none."""
    b, c, h, w = x.shape
    blocks = x.reshape(b, c, h // f, f, w // f, f)
    valid = torch.isfinite(blocks)
    cnt = valid.sum(dim=(3, 5))
    s = torch.where(valid, blocks, torch.zeros_like(blocks)).sum(dim=(3, 5))
    return torch.where(cnt > 0, s / cnt.clamp(min=1), torch.full_like(s, float("nan")))


def coarsen(a: np.ndarray, f: int) -> np.ndarray:
    """[C, H, W] area mean over valid pixels of f x f blocks; NaN where a block has none."""
    if f == 1:
        return a
    return _coarsen(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None], f)[0].numpy()


@dataclass(frozen=True)
class Block:
    """The decoded pixels of one (source, time, group) block over its chip grid."""

    pixels: np.ndarray
    """[len(bands), rows * n, cols * n] stored values of the decoded bands."""
    bands: tuple[int, ...]
    """The group's band indices decoded (those some sample of the window keeps), ascending."""


@dataclass
class TrainBatch:
    """One micro-batch: native view, optional coarse view (stored pixels), bookkeeping."""

    index: int
    """Global micro-batch index in its epoch."""
    raw_native: RawView | None
    """None when every chip of the batch failed to read."""
    raw_coarse: RawView | None
    """The coarse view, when the batch has one."""
    chip_ids: tuple[int, ...]
    """Chips delivered (failed ones left out)."""
    skipped_chips: int = 0
    """Chips of the plan that failed to read."""

    @property
    def size(self) -> int:
        return 0 if self.raw_native is None else int(self.raw_native.pixels[0].shape[0])

    def to(self, device: torch.device | str) -> tuple[BandBatch | None, BandBatch | None]:
        """(native, coarse) moved to ``device`` as stored integers and normalised there."""
        native = None if self.raw_native is None else self.raw_native.to_bands(device)
        coarse = None if self.raw_coarse is None else self.raw_coarse.to_bands(device)
        return native, coarse

    @property
    def native(self) -> BandBatch | None:
        """The native view normalised on the CPU."""
        return None if self.raw_native is None else self.raw_native.to_bands("cpu")

    @property
    def coarse(self) -> BandBatch | None:
        """The coarse view normalised on the CPU."""
        return None if self.raw_coarse is None else self.raw_coarse.to_bands("cpu")


# ---------------------------------------------------------------------------------------------
# Dataset


class ChipBatchDataset(Dataset[TrainBatch]):
    """Map-style dataset over the micro-batches of one epoch (item ``i`` = global micro-batch ``i``).

    ``augment=False`` keeps every group and band (evaluation); ``with_coarse=False`` skips the
    second view. Open stores are cached per process and never pickled to workers. :func:`make_loader` reads whole windows (each block decoded once);
    ``ds[i]`` decodes what micro-batch ``i`` alone needs.
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
        self._meta: dict[tuple[Any, ...], Any] = {}
        self.chip_ids = index.split_ids(split)
        if not self.chip_ids:
            raise NoValidChipsError(f"no valid chips in split {split!r}: {index.counts.to_dict()}")
        missing = [k for k in index.band_keys() if k not in norm.mean]
        if missing:
            raise CubeDataError(f"no normalisation statistics for bands {missing}")
        self.epoch = -1
        self.plan = EpochPlan((), 0)
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.plan = build_plan(
                self.index,
                self.chip_ids,
                self.batch_size,
                self.seed,
                epoch,
                streams=None if self.drop_remainder else 1,
                augment=self.augment,
                with_coarse=self.with_coarse,
                drop_remainder=self.drop_remainder,
            )
            if not len(self.plan):
                raise NoValidChipsError(
                    f"split {self.split!r} has {len(self.chip_ids)} valid chips but some data stream "
                    f"(of {self.index.chip.streams}, windows of {self.index.chip.window_blocks} (tile, time) "
                    f"blocks) has no full micro-batch of {self.batch_size} of one layout; lower batch_size "
                    "or streams, or add cubes"
                )

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> TrainBatch:
        s, w, j = self.plan.locate(i)
        return self.window_items(s, w, [j])[0]

    def window_items(self, stream: int, w: int, positions: Sequence[int] | None = None) -> list[TrainBatch]:
        """Micro-batches ``positions`` (default all) of window ``w`` of ``stream``: every (block, group)
        they use is decoded once, with exactly the bands some of their samples keep."""
        win = self.plan.streams[stream][w]
        js = list(range(len(win.batches))) if positions is None else list(positions)
        specs = [win.batches[j] for j in js]
        data: dict[tuple[int, int, int], Block] = {}
        failed: set[tuple[int, int]] = set()
        for rd in reads(self.index, specs):
            if (rd.source, rd.t) in failed:
                continue
            try:
                arr = self.reader.read_block(rd.source, rd.t, rd.group, rd.bands)
            except Exception as e:  # corrupt chunk, network error: drop the block's chips, count them
                src = self.index.sources[rd.source]
                log.warning("%s/%s t=%d unreadable: %s", src.tile_id, src.collection, rd.t, e)
                failed.add((rd.source, rd.t))
                continue
            data[(rd.source, rd.t, rd.group)] = Block(arr, tuple(rd.bands))
        return [
            self._assemble((win.first + j) * len(self.plan.streams) + stream, spec, data, failed)
            for j, spec in zip(js, specs)
        ]

    def _view(
        self,
        source: int,
        chips: list[tuple[int, int, int, int]],
        keep: Sequence[int],
        masks: list[tuple[tuple[bool, ...], ...]],
        data: dict[tuple[int, int, int], Block],
        factor: int,
    ) -> RawView:
        """One view of a micro-batch; ``chips``: (source, t, row, col) per sample, all of one layout;
        ``data``: (source, t, group) -> the block's decoded bands. The chips of one block are cut in
        one indexing operation; a band no sample keeps is never decoded and holds the fill value."""
        src = self.index.sources[source]
        view = RawView([], [], [], [], [], [], [], [], [], [], factor)
        by_block: dict[tuple[int, int], list[int]] = {}
        for j, (s, t, _, _) in enumerate(chips):
            by_block.setdefault((s, t), []).append(j)
        for k, gi in enumerate(keep):
            g = src.groups[gi]
            key = ("meta", source, gi)
            if key not in self._meta:
                mean, std = self.norm.arrays(g.band_keys)
                wl, fw = np.array(g.wavelength_nm, np.float32), np.array(g.fwhm_nm, np.float32)
                self._meta[key] = (round(self.index.chip.chip_m / g.gsd_m), mean, std, wl, fw)
            n, mean, std, wl, fw = self._meta[key]
            bv = np.array([m[k] for m in masks], dtype=bool)  # [B, C]
            params = {self._encoding(s, gi) for s in {s for s, _ in by_block}}
            mixed = len(params) > 1  # stores of different encodings in one batch: decode on the CPU
            if mixed:
                dtype, scale, offset, fill = np.dtype(np.float32), 1.0, 0.0, None
            else:
                dtype, scale, offset, fill = params.pop()
            px = np.empty((len(chips), len(g.bands), n, n), dtype=dtype)  # [B, C, H, W]
            for (s, t), js in by_block.items():
                blk = data[(s, t, gi)]
                nb, hh, ww = blk.pixels.shape
                grid = blk.pixels.reshape(nb, hh // n, n, ww // n, n).transpose(1, 3, 0, 2, 4)  # view
                rows = np.array([chips[j][2] for j in js])
                cols = np.array([chips[j][3] for j in js])
                cut = grid[rows, cols]  # [k, C', n, n]
                if mixed:
                    cut = self.reader.raw(s, gi).to_float(cut)
                if len(blk.bands) == len(g.bands):
                    px[js] = cut
                else:
                    px[np.ix_(js, blk.bands)] = cut
            px[~bv] = np.nan if fill is None else fill  # dropped (and undecoded) bands carry no data
            view.pixels.append(px)
            view.band_valid.append(bv)
            view.scale.append(scale)
            view.offset.append(offset)
            view.fill.append(fill)
            view.mean.append(mean)
            view.std.append(std)
            view.gsd_m.append(float(g.gsd_m) * factor)
            view.wavelength_nm.append(wl)
            view.fwhm_nm.append(fw)
        return view

    def _encoding(self, source: int, gi: int) -> tuple[Any, float, float, float | None]:
        rg = self.reader.raw(source, gi)
        return (rg.dtype, rg.scale, rg.offset, rg.fill)

    def _assemble(
        self,
        i: int,
        spec: BatchSpec,
        data: dict[tuple[int, int, int], Block],
        failed: set[tuple[int, int]],
    ) -> TrainBatch:
        natives: list[tuple[int, int, int, int]] = []
        coarses: list[tuple[int, int, int, int]] = []
        nmasks, cmasks, ids = [], [], []
        skipped = 0
        own = spec.coarse_factor > 1
        for k, cid in enumerate(spec.chips):
            c = self.index.chips[cid]
            cs, ct = (c.source, c.t) if own or c.partner is None else c.partner
            if (c.source, c.t) in failed or (spec.keep_coarse is not None and (cs, ct) in failed):
                skipped += 1
                continue
            natives.append((c.source, c.t, c.row, c.col))
            nmasks.append(spec.native_masks[k])
            if spec.keep_coarse is not None:
                coarses.append((cs, ct, c.row, c.col))
                cmasks.append(spec.coarse_masks[k])
            ids.append(cid)
        if not natives:
            return TrainBatch(i, None, None, tuple(ids), skipped)
        native = self._view(natives[0][0], natives, spec.keep_native, nmasks, data, 1)
        coarse = None
        if spec.keep_coarse is not None:
            coarse = self._view(coarses[0][0], coarses, spec.keep_coarse, cmasks, data, spec.coarse_factor)
        return TrainBatch(i, native, coarse, tuple(ids), skipped)


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


class _Windows(Dataset[tuple[tuple[int, int], dict[int, TrainBatch]]]):
    """Item ``k``: ((stream, window), position -> micro-batch) of the ``k``-th window a rank needs
    from local position ``start`` on, in the order the rank first needs them."""

    def __init__(self, dataset: ChipBatchDataset, rank: int, world: int, start: int) -> None:
        self.dataset = dataset
        plan = dataset.plan
        n_streams = len(plan.streams)
        items = []
        for s in range(rank, n_streams, world):
            for w, win in enumerate(plan.streams[s]):
                # local position of stream position q: (q * S + s - rank) / world
                local = [((win.first + j) * n_streams + s - rank) // world for j in range(len(win.batches))]
                keep = [j for j, p in enumerate(local) if p >= start]
                if keep:
                    items.append((local[keep[0]], (s, w), keep))
        self.items = [(key, keep) for _, key, keep in sorted(items)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[tuple[int, int], dict[int, TrainBatch]]:
        (s, w), positions = self.items[k]
        return (s, w), dict(zip(positions, self.dataset.window_items(s, w, positions)))


class ChipLoader:
    """This rank's micro-batches in order from local position ``start``; data-loader workers read
    whole windows in parallel and only change speed, never content or order."""

    def __init__(
        self,
        loader: DataLoader[tuple[tuple[int, int], dict[int, TrainBatch]]],
        plan: EpochPlan,
        rank: int,
        world: int,
        start: int,
    ) -> None:
        self.loader, self.plan = loader, plan
        self.rank, self.world, self.start = rank, world, start

    def __len__(self) -> int:
        return max(0, len(self.plan) // self.world - self.start)

    def __iter__(self) -> Iterator[TrainBatch]:
        it = iter(self.loader)
        held: dict[tuple[int, int], dict[int, TrainBatch]] = {}  # windows being delivered
        for p in range(self.start, len(self.plan) // self.world):
            s, w, j = self.plan.locate(p * self.world + self.rank)
            while (s, w) not in held:
                key, batches = next(it)
                held[key] = batches
            tb = held[(s, w)].pop(j)
            if not held[(s, w)]:
                del held[(s, w)]
            yield tb


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
) -> ChipLoader:
    """Loader over this rank's micro-batches of the dataset's current epoch, from local position ``start``
    (global micro-batch ``p * world + rank`` at local position ``p``)."""
    dataset.plan.check_world(world)
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside 0..{world - 1}")
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs = {
            "prefetch_factor": prefetch_factor,
            "worker_init_fn": _worker_init,
            "persistent_workers": False,
        }
    windows = _Windows(dataset, rank, world, start)
    loader = DataLoader(
        windows, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_identity, **kwargs
    )
    return ChipLoader(loader, dataset.plan, rank, world, start)


__all__ = [
    "BatchSpec",
    "ChipBatchDataset",
    "ChipLoader",
    "RankSampler",
    "RawView",
    "TrainBatch",
    "coarsen",
    "epoch_plan",
    "make_loader",
]

"""The epoch plan and the shard-level loader: blocks decoded once with the union of the bands their
chips keep, the same batches for any number of workers and world sizes, disjoint rank shards,
exact resume."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from aom_model.train import (
    ChipBatchDataset,
    ChipConfig,
    ChipIndex,
    NormStats,
    TrainBatch,
    build_plan,
    compute_norm_stats,
    make_loader,
)
from aom_model.train.plan import n_streams_for, reads
from pipelines.pretrain import OPENER

CHIPS = ChipConfig(chip_m=480.0, val_fraction=0.0, streams=4, window_blocks=2)


@pytest.fixture(scope="module")
def index(synthetic_cubes: str) -> ChipIndex:
    return ChipIndex.build([synthetic_cubes], chip=CHIPS, opener=OPENER)


@pytest.fixture(scope="module")
def norm(index: ChipIndex) -> NormStats:
    return compute_norm_stats(index, seed=0)


def _arrays(tb: TrainBatch) -> list[np.ndarray]:
    out = [np.array(tb.chip_ids), np.array([tb.index, tb.skipped_chips])]
    for view in (tb.raw_native, tb.raw_coarse):
        if view is not None:
            out += [*view.pixels, *view.band_valid, np.array(view.gsd_m)]
    return out


def _same(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert len(x) == len(y)
        for u, v in zip(x, y):
            assert u.dtype == v.dtype and u.shape == v.shape
            np.testing.assert_array_equal(u, v)


def test_plan_invariants(index: ChipIndex) -> None:
    ids = index.split_ids("train")
    plan = build_plan(index, ids, 2, seed=0, epoch=0)
    n = len(plan.streams)
    assert n == n_streams_for(4, len({(index.chips[i].source, index.chips[i].t) for i in ids}), len(ids), 2)
    assert n >= 2 and n & (n - 1) == 0 and len(plan) == n * plan.per_stream > 0
    flat = plan.flat()
    chips = [c for b in flat for c in b.chips]
    assert len(chips) == len(set(chips))  # no chip twice per epoch
    for b in flat:
        assert len({index.layout_key(index.chips[c]) for c in b.chips}) == 1
        for masks in b.native_masks:
            assert len(masks) == len(b.keep_native) and all(any(m) for m in masks)
    # micro-batch i is a pure function of (seed, epoch, i): rebuilt plans agree, other epochs differ
    assert build_plan(index, ids, 2, seed=0, epoch=0).flat() == flat
    assert build_plan(index, ids, 2, seed=0, epoch=1).flat() != flat
    # rank shards: rank r of W takes i = p * W + r = streams r, r + W, ...; their blocks are disjoint
    for world in (w for w in (2, 4) if n % w == 0):
        plan.check_world(world)
        blocks = []
        for r in range(world):
            mine = {
                (index.chips[c].source, index.chips[c].t)
                for i in range(r, len(plan), world)
                for c in plan.batch(i).chips
            }
            blocks.append(mine)
        for r in range(world):
            for q in range(r + 1, world):
                assert not blocks[r] & blocks[q]
    with pytest.raises(ValueError, match="must divide"):
        plan.check_world(3)


def test_loader_same_batches_for_workers_worlds_and_resume(index: ChipIndex, norm: NormStats) -> None:
    ds = ChipBatchDataset(index, norm, batch_size=2, seed=7)
    zero = [_arrays(tb) for tb in make_loader(ds, num_workers=0)]
    two = [_arrays(tb) for tb in make_loader(ds, num_workers=2)]
    assert len(zero) == len(ds)
    _same(zero, two)  # bit for bit, whatever the number of workers
    assert [int(x[1][0]) for x in zero] == list(range(len(ds)))
    # two ranks deliver exactly the global sequence, interleaved; each from a clean process state
    ranks = [
        [_arrays(tb) for tb in make_loader(ChipBatchDataset(index, norm, 2, seed=7), r, 2)] for r in (0, 1)
    ]
    merged = [ranks[i % 2][i // 2] for i in range(2 * len(ranks[0]))]
    _same(zero[: len(merged)], merged)
    # resume at any local position equals the tail of the uninterrupted epoch
    for start in (1, len(zero) // 2, len(zero) - 1):
        fresh = ChipBatchDataset(index, norm, batch_size=2, seed=7)
        _same(zero[start:], [_arrays(tb) for tb in make_loader(fresh, start=start, num_workers=2)])
    # single items agree with the loader
    _same(zero[:3], [_arrays(ds[i]) for i in range(3)])


def test_each_block_decoded_once_with_the_union_of_the_bands_its_chips_keep(
    index: ChipIndex, norm: NormStats
) -> None:
    ds = ChipBatchDataset(index, norm, batch_size=2, seed=3)
    batches = list(make_loader(ds, num_workers=0))
    recorded: Counter[tuple[str, str, str, int, int]] = Counter()
    for key, rg in ds.reader._cache.items():
        if key[0] != "store":
            _, tile, coll, label = key
            recorded.update((tile, coll, label, t, b) for t, b in rg.counts.bands)
    # what was read is exactly what the plan's windows use, each (block, group, band) once per window
    expected: Counter[tuple[str, str, str, int, int]] = Counter()
    for stream in ds.plan.streams:
        for win in stream:
            for rd in reads(index, win.batches):
                src = index.sources[rd.source]
                g = src.groups[rd.group]
                tg = src.time_index[rd.t][rd.group]
                expected.update((src.tile_id, src.collection, g.gsd_label, tg, b) for b in rd.bands)
    assert recorded == expected
    # every band read is one some delivered sample keeps (band_valid True): a band no chip keeps is never read
    used: set[tuple[str, str, str, int, int]] = set()
    for tb in batches:
        spec = ds.plan.batch(tb.index)
        for k, cid in enumerate(tb.chip_ids):
            c = index.chips[cid]
            views = [(tb.raw_native, spec.keep_native, (c.source, c.t))]
            if tb.raw_coarse is not None and spec.keep_coarse is not None:
                cs = (c.source, c.t) if spec.coarse_factor > 1 or c.partner is None else c.partner
                views.append((tb.raw_coarse, spec.keep_coarse, cs))
            for view, keep, (s, t) in views:
                assert view is not None
                src = index.sources[s]
                for j, gi in enumerate(keep):
                    g = src.groups[gi]
                    for b in np.flatnonzero(view.band_valid[j][k]):
                        used.add((src.tile_id, src.collection, g.gsd_label, src.time_index[t][gi], int(b)))
    assert set(recorded) == used  # a block decodes exactly the union of the bands its chips keep
    # the sampler drops bands, per chip: chips of one block get different band subsets
    per_block: dict[tuple[int, int], set[tuple[tuple[bool, ...], ...]]] = {}
    dropped = 0
    for tb in batches:
        spec = ds.plan.batch(tb.index)
        for k, cid in enumerate(tb.chip_ids):
            c = index.chips[cid]
            per_block.setdefault((c.source, c.t), set()).add(spec.native_masks[k])
            dropped += sum(not v for m in spec.native_masks[k] for v in m)
    assert dropped > 0
    assert any(len(masks) > 1 for masks in per_block.values())


def test_device_normalisation_matches_cpu_reflectance(index: ChipIndex, norm: NormStats) -> None:
    """Stored int16 handed over and normalised in torch equals normalising the float reflectance."""
    ds = ChipBatchDataset(index, norm, batch_size=2, seed=0, augment=False, with_coarse=False)
    tb = ds[0]
    native = tb.native
    assert native is not None and tb.raw_native is not None
    assert all(px.dtype == np.int16 for px in tb.raw_native.pixels)  # the stored dtype crosses over
    spec = ds.plan.batch(0)
    for k, cid in enumerate(tb.chip_ids):
        c = index.chips[cid]
        arrays = ds.reader.read_chip(c.source, c.t, c.row, c.col)
        for gi, g in enumerate(native.groups):
            src = index.sources[c.source]
            mean, std = norm.arrays(src.groups[spec.keep_native[gi]].band_keys)
            want = (arrays[spec.keep_native[gi]] - mean[:, None, None]) / std[:, None, None]
            np.testing.assert_allclose(g.pixels[k].numpy(), want, rtol=1e-5, atol=1e-5)
            assert torch.equal(torch.isnan(g.pixels[k]), torch.from_numpy(np.isnan(want)))


def test_world_must_divide_streams(index: ChipIndex, norm: NormStats) -> None:
    one = ChipIndex.build(list(index.urls), chip=replace(CHIPS, streams=1), opener=OPENER)
    ds = ChipBatchDataset(one, norm, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="must divide"):
        make_loader(ds, 0, 2)


@pytest.mark.gpu
def test_device_normalisation_on_cuda_equals_cpu(index: ChipIndex, norm: NormStats) -> None:
    ds = ChipBatchDataset(index, norm, batch_size=2, seed=0)
    for i in range(min(3, len(ds))):
        tb = ds[i]
        for cpu, gpu in zip(tb.to("cpu"), tb.to("cuda")):
            if cpu is None:
                assert gpu is None
                continue
            assert gpu is not None
            for a, b in zip(cpu.groups, gpu.groups):
                assert b.pixels.device.type == "cuda"
                torch.testing.assert_close(b.pixels.cpu(), a.pixels, equal_nan=True, rtol=1e-5, atol=1e-5)
                assert a.band_valid is not None and b.band_valid is not None
                assert torch.equal(b.band_valid.cpu(), a.band_valid)

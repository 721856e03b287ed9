"""Training data: cube reading (through ``pipelines.cubes.CubeStore``), chip index, sampling, masks,
normalisation, faults."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aom_model.train import (
    ChipBatchDataset,
    ChipConfig,
    ChipIndex,
    CubeDataError,
    NormStats,
    NoValidChipsError,
    RankSampler,
    compute_norm_stats,
    epoch_plan,
    make_loader,
)
from pipelines.cubes import CubeStore
from pipelines.pretrain import OPENER
from pipelines.testing import LANDSAT, SENTINEL2, write_synthetic_cubes
from tests.conftest import REPO_ROOT

REPO = REPO_ROOT
CHIPS = ChipConfig(chip_m=480.0, val_fraction=0.25)


@pytest.fixture(scope="module")
def index(synthetic_cubes: str) -> ChipIndex:
    return ChipIndex.build([synthetic_cubes], chip=CHIPS, opener=OPENER)


@pytest.fixture(scope="module")
def norm(index: ChipIndex) -> NormStats:
    return compute_norm_stats(index, seed=0)


def _batch_arrays(tb):
    out = []
    for view in (tb.native, tb.coarse):
        if view is None:
            continue
        for g in view.groups:
            out += [g.pixels.numpy(), g.band_valid.numpy(), g.gsd_m.numpy(), g.wavelength_nm.numpy()]
    return out


def test_reader_follows_completion_records(synthetic_cubes: str) -> None:
    cs = CubeStore.open(synthetic_cubes)
    assert cs.complete_tiles() == ["T000", "T001"]  # T002 has data but no record; TE00 is empty
    assert cs.empty_tiles() == ["TE00"]
    assert set(cs.groups("T000")) == {
        ("sentinel-2-l2a", "10m"),
        ("sentinel-2-l2a", "20m"),
        ("sentinel-2-l2a", "60m"),
        ("landsat-c2-l2", "30m"),
    }
    groups = cs.open_tile("T000")
    ds = groups[("sentinel-2-l2a", "10m")]
    r = ds["reflectance"].isel(time=1).values
    assert r.shape == (4, 96, 96) and np.isnan(r).any() and np.nanmax(r) < 1.6
    with pytest.raises(CubeDataError, match="no 'complete' record"):
        cs.open_tile("T002")
    with pytest.raises(CubeDataError, match="does not exist"):
        CubeStore.open(str(Path(synthetic_cubes) / "nope"))
    with pytest.raises(CubeDataError, match="does not exist"):
        ChipIndex.build([str(Path(synthetic_cubes) / "nope")], chip=CHIPS, opener=OPENER)


def test_index_skips_invalid_chips_and_splits(index: ChipIndex) -> None:
    c = index.counts
    assert c.tiles_complete == 2 and c.tiles_empty == 1
    # 2 tiles x 2 collections x 3 times x 4 chips; time 0 is 97 % cloudy -> skipped
    assert c.chips_total == 48
    assert c.chips_skipped_invalid >= 16
    assert c.chips_valid == len(index.chips) == c.chips_total - c.chips_skipped_invalid
    assert all(ch.t != 0 for ch in index.chips)
    assert all(ch.valid_frac >= CHIPS.min_valid_frac for ch in index.chips)
    train, val = set(index.split_ids("train")), set(index.split_ids("val"))
    assert train and val and not train & val and len(train | val) == len(index.chips)
    # held out by location: a location is in one split for every time and collection
    loc: dict[tuple[str, int, int], set[bool]] = {}
    for i in train | val:
        ch = index.chips[i]
        key = (index.sources[ch.source].tile_id, ch.row, ch.col)
        loc.setdefault(key, set()).add(i in val)
    assert all(len(v) == 1 for v in loc.values())
    # Sentinel-2 chips get a Landsat partner (coarser, same place, nearest valid time)
    s2 = [ch for ch in index.chips if index.sources[ch.source].collection == "sentinel-2-l2a"]
    assert s2 and any(ch.partner is not None for ch in s2)
    for ch in s2:
        if ch.partner is not None:
            assert index.sources[ch.partner[0]].collection == "landsat-c2-l2"


def test_epoch_plan_no_chip_twice_and_rank_sharding(index: ChipIndex) -> None:
    ids = index.split_ids("train")
    plan = epoch_plan(index, ids, 2, seed=0, epoch=0)
    flat = [c for b in plan for c in b.chips]
    assert len(flat) == len(set(flat))
    for b in plan:  # layout-homogeneous micro-batches
        assert len({index.layout_key(index.chips[c]) for c in b.chips}) == 1
    assert epoch_plan(index, ids, 2, seed=0, epoch=0) == plan
    assert epoch_plan(index, ids, 2, seed=0, epoch=1) != plan
    n = len(plan)
    r0, r1 = list(RankSampler(n, 0, 2)), list(RankSampler(n, 1, 2))
    assert not set(r0) & set(r1) and len(r0) == len(r1) == n // 2
    assert sorted(r0 + r1) == list(range(2 * (n // 2)))
    assert list(RankSampler(n, 1, 2, start=1)) == r1[1:]


def test_dataset_deterministic_and_worker_independent(index: ChipIndex, norm: NormStats) -> None:
    ds = ChipBatchDataset(index, norm, batch_size=2, seed=7)
    a = [_batch_arrays(tb) for tb in make_loader(ds, num_workers=0)]
    b = [_batch_arrays(tb) for tb in make_loader(ds, num_workers=2)]
    assert len(a) == len(b) == len(ds)
    for x, y in zip(a, b):
        assert len(x) == len(y)
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    ds2 = ChipBatchDataset(index, norm, batch_size=2, seed=8)
    assert any(
        len(x) != len(y)
        or any(u.shape != v.shape or not np.array_equal(u, v, equal_nan=True) for u, v in zip(x, y))
        for x, y in zip(a, [_batch_arrays(ds2[i]) for i in range(len(ds2))])
    )


def test_masks_hierarchical_sampling_and_views(index: ChipIndex, norm: NormStats) -> None:
    ds = ChipBatchDataset(index, norm, batch_size=2, seed=1)
    layouts, subsets, coarse_gsds = set(), 0, set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            tb = ds[i]
            assert tb.native is not None and tb.skipped_chips == 0
            tb.native.validate()
            layouts.add(tuple(round(float(g.gsd_m[0])) for g in tb.native.groups))
            for g in tb.native.groups:
                bv = g.band_valid
                assert bv is not None and bool(bv.any(dim=1).all())  # >= 1 band per kept group and sample
                subsets += int((~bv).any())
                # dropped bands carry no data; NaN pixels are masked, never zero-filled
                assert bool(torch.isnan(g.pixels[~bv]).all())
                if g.pixel_valid is not None:
                    assert torch.equal(g.pixel_valid, torch.isfinite(g.pixels))
                assert bool(torch.isfinite(g.pixels[bv]).any())
            if tb.coarse is not None:
                tb.coarse.validate()
                assert tb.coarse.batch_size == tb.native.batch_size
                fine = min(float(g.gsd_m[0]) for g in tb.native.groups)
                coarse = min(float(g.gsd_m[0]) for g in tb.coarse.groups)
                assert coarse > fine
                coarse_gsds.add(round(coarse))
    assert subsets > 0
    # S2 with some of 10/20/60 m dropped (stage 1), Landsat 30 m
    assert (30,) in layouts and len([lay for lay in layouts if lay != (30,)]) >= 2
    assert 30 in coarse_gsds and 60 in coarse_gsds  # Landsat partner; Landsat coarsened x2


def test_norm_stats(index: ChipIndex, norm: NormStats) -> None:
    keys = index.band_keys()
    assert set(norm.mean) == set(keys)
    assert "sentinel-2-msi/B04" in keys and "landsat-oli/B5" in keys
    for k in keys:
        assert 0.0 < norm.mean[k] < 0.6 and 0.0 < norm.std[k] < 0.5
    assert norm.mean["sentinel-2-msi/B08"] > norm.mean["sentinel-2-msi/B04"]  # NIR brighter than red
    assert NormStats.from_dict(json.loads(json.dumps(norm.to_dict()))).to_dict() == norm.to_dict()
    assert compute_norm_stats(index, seed=0).to_dict() == norm.to_dict()  # deterministic
    # normalised training pixels are roughly standardised
    ds = ChipBatchDataset(index, norm, batch_size=2, seed=0, augment=False, with_coarse=False)
    natives = [ds[i].native for i in range(len(ds))]
    vals = torch.cat(
        [g.pixels[torch.isfinite(g.pixels)] for nb in natives if nb is not None for g in nb.groups]
    )
    assert abs(float(vals.mean())) < 0.3 and 0.6 < float(vals.std()) < 1.4
    # fine-tuning: known keys kept, new keys estimated
    known = NormStats({"sentinel-2-msi/B04": 0.5}, {"sentinel-2-msi/B04": 2.0}, {"sentinel-2-msi/B04": 1})
    merged = compute_norm_stats(index, seed=0, known=known)
    assert merged.mean["sentinel-2-msi/B04"] == 0.5 and set(merged.mean) == set(keys)


def test_no_valid_chips(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    write_synthetic_cubes(root, n_tiles=0, empty_tiles=2)
    with pytest.raises(NoValidChipsError, match="no valid chips"):
        ChipIndex.build([str(root)], chip=CHIPS, opener=OPENER)
    cloudy = tmp_path / "cloudy"
    write_synthetic_cubes(cloudy, n_tiles=1, n_times=1, collections=(LANDSAT,))  # the only time is 97 % cloud
    with pytest.raises(NoValidChipsError, match="chips_skipped_invalid"):
        ChipIndex.build([str(cloudy)], chip=CHIPS, opener=OPENER)


def test_a_chip_size_no_gsd_divides_names_the_valid_sizes(synthetic_cubes: str) -> None:
    """--chip-m 7 said 'no valid chips' with the index's counters; the line names the cubes' GSDs
    (10, 20, 30, 60 m), a size every group can use and the tiles' side."""
    valid = "give a multiple of 10, 20, 30 or 60 m (a multiple of 60 m, e.g. 480, uses every group), at most the tiles' 960 m side"
    with pytest.raises(NoValidChipsError) as err:
        ChipIndex.build([synthetic_cubes], chip=ChipConfig(chip_m=7.0), opener=OPENER)
    assert (
        str(err.value)
        == f"chip_m (--chip-m) 7 m is not a multiple of any GSD of the cubes (10, 20, 30, 60 m): {valid}"
    )
    with pytest.raises(NoValidChipsError) as err:
        ChipIndex.build([synthetic_cubes], chip=ChipConfig(chip_m=1920.0), opener=OPENER)
    assert str(err.value) == f"chip_m (--chip-m) 1920 m is larger than the cubes' 960 m tiles: {valid}"


def test_mismatched_band_metadata(tmp_path: Path, synthetic_cubes: str) -> None:
    from dataclasses import replace

    bad_bands = tuple(
        replace(b, center_wavelength_nm=b.center_wavelength_nm + 30.0) if b.name == "B4" else b
        for b in LANDSAT.bands
    )
    other = tmp_path / "other"
    write_synthetic_cubes(other, n_tiles=1, n_times=2, collections=(replace(LANDSAT, bands=bad_bands),))
    with pytest.raises(CubeDataError, match="mismatched band metadata for landsat-oli/B4"):
        ChipIndex.build([synthetic_cubes, str(other)], chip=CHIPS, opener=OPENER)


def test_corrupt_chunk_is_skipped_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "corrupt"
    write_synthetic_cubes(root, n_tiles=1, n_times=2, collections=(SENTINEL2,), cloud_cover=(0.0, 0.0))
    index = ChipIndex.build([str(root)], chip=ChipConfig(chip_m=480.0, coarse_view=False), opener=OPENER)
    norm = compute_norm_stats(index)
    chunks = sorted(
        p for p in (root / "T000" / "sentinel-2-l2a" / "10m" / "reflectance").rglob("*") if p.is_file()
    )
    assert chunks
    for p in chunks:
        if p.name != "zarr.json":
            p.write_bytes(b"garbage")
    ds = ChipBatchDataset(index, norm, batch_size=2, seed=0)
    tb = ds[0]
    assert tb.native is None and tb.skipped_chips == 2  # every chip unreadable: counted, no data invented


def test_multiple_stores(tmp_path: Path, synthetic_cubes: str) -> None:
    other = tmp_path / "s2only"
    write_synthetic_cubes(other, seed=11, n_tiles=1, n_times=2, collections=(SENTINEL2,), tile_prefix="U")
    index = ChipIndex.build([synthetic_cubes, str(other)], chip=CHIPS, opener=OPENER)
    assert index.counts.stores == 2 and {s.store for s in index.sources} == {0, 1}
    assert {index.sources[c.source].tile_id[0] for c in index.chips} == {"T", "U"}


def test_aom_model_imports_no_stac_or_prefect() -> None:
    code = (
        "import sys, aom_model.train, aom_model.train.cube_reader, pipelines.pretrain\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('pystac', 'pystac_client', 'odc', 'prefect')]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_store_url_with_file_scheme(synthetic_cubes: str, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_cubes, copy)
    index = ChipIndex.build([f"file://{copy}"], chip=CHIPS, opener=OPENER)
    assert index.counts.chips_valid > 0
    ds = ChipBatchDataset(index, compute_norm_stats(index), batch_size=2, seed=0)
    assert ds[0].native is not None


def test_index_reads_production_and_synthetic_stores_alike(tmp_path: Path, synthetic_cubes: str) -> None:
    """A cube run's synthetic_cubes and a synthetic one go through the same reader into one index."""
    from pipelines.cubes import write_cubes
    from tests.pipelines.cubes.support import TILE_IDS, s2_item, spec

    item = s2_item(tmp_path / "items", "A", cloud_boxes=[(0.1, 0.55, 0.4, 0.9)])
    real = tmp_path / "production"
    assert write_cubes([item], TILE_IDS[:1], spec(), str(real), progress=False).tiles_done == TILE_IDS[:1]
    index = ChipIndex.build([str(real), synthetic_cubes], chip=CHIPS, opener=OPENER)
    assert {index.sources[c.source].store for c in index.chips} == {0, 1}
    prod = [s for s in index.sources if s.store == 0]
    assert [s.tile_id for s in prod] == TILE_IDS[:1]
    assert [g.gsd_label for g in prod[0].groups] == ["10m", "20m", "60m"]
    # 1920 m tile: 4 x 4 chips of 480 m, one acquisition; the cloud box leaves some invalid
    assert prod[0].n_rows == prod[0].n_cols == 4 and len(prod[0].times) == 1
    ds = ChipBatchDataset(index, compute_norm_stats(index), batch_size=2, seed=0, with_coarse=False)
    assert all(ds[i].native is not None for i in range(len(ds)))

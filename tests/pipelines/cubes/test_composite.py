"""Stored composites (``aom cubes --composite median``): one median per tile and group, what
``aom embed`` reads from it equals the on-the-fly median of a store of acquisitions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.cubes import CubeSpec, CubeStore, write_cubes
from pipelines.cubes.composite import median_block
from pipelines.cubes.spec import INT16_FILL
from pipelines.embed import CubeSource, parse_periods
from pipelines.tiling import TileGrid

TILE = "32631_95_649"
PERIOD = "2023-01-01/2023-12-31"


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, sample_items: list[dict[str, Any]]) -> dict[str, Path]:
    grid = TileGrid()
    root = tmp_path_factory.mktemp("composite")
    out = {}
    for composite in ("none", "median"):
        spec = CubeSpec(
            grid=grid, collections=("sentinel-2-l2a", "landsat-c2-l2"), catalog="sample", composite=composite
        )
        s = write_cubes(sample_items, [grid.tile(TILE)], spec, str(root / composite), progress=False)
        assert s.tiles_done == [TILE], s.format()
        out[composite] = root / composite
    return out


def test_median_block_is_the_median_of_valid_stored_values() -> None:
    f = INT16_FILL
    block = np.array(
        [[[[10, f, 7, f]]], [[[30, 4, f, f]]], [[[20, 6, 9, f]]], [[[f, f, 8, f]]]], dtype=np.int16
    )
    got = median_block(block, "int16")  # [4, 1, 1, 4] -> [1, 1, 1, 4]
    assert got.shape == (1, 1, 1, 4) and got.dtype == np.int16
    assert got.ravel().tolist() == [20, 5, 8, f]  # odd count: a stored value; even: the mean (4 + 6) / 2
    half = median_block(np.array([[[[1]]], [[[2]]]], dtype=np.int16), "int16")
    assert half.ravel()[0] in (1, 2)  # 1.5 is rounded to the stored encoding: within half a unit
    f16 = median_block(np.array([[[[1.0, np.nan]]], [[[3.0, np.nan]]]], dtype=np.float16), "float16")
    assert f16.dtype == np.float16 and f16.ravel()[0] == 2.0 and np.isnan(f16.ravel()[1])


def test_a_composite_store_holds_one_median_per_group(stores: dict[str, Path]) -> None:
    full, comp = CubeStore.open(str(stores["none"])), CubeStore.open(str(stores["median"]))
    rec_full, rec_comp = full.record(TILE), comp.record(TILE)
    assert rec_comp["spec_fingerprint"] != rec_full["spec_fingerprint"]  # never mixed in one store
    assert (
        "composite"
        not in CubeSpec(grid=TileGrid(), collections=("sentinel-2-l2a",), catalog="sample").to_dict()
    )
    by_key = {(g["collection"], g["gsd_label"]): g for g in rec_full["groups"]}
    assert any(len(g["times"]) > 2 for g in by_key.values())  # something to combine
    for g in rec_comp["groups"]:
        src = by_key[(g["collection"], g["gsd_label"])]
        assert g["times"] == src["times"][:1] and g["shape"][0] == 1
        assert sorted(g["source_items"][0].split(",")) == sorted(
            {i for s in src["source_items"] for i in s.split(",")}
        )
        ds = comp.open_group(TILE, g["collection"], g["gsd_label"])
        assert len(ds.attrs["composite_times"]) == len(src["times"]) and "median" in ds.attrs["composite"]
    json.dumps(rec_comp)  # plain JSON


def test_embedding_reads_of_a_composite_equal_the_on_the_fly_median(stores: dict[str, Path]) -> None:
    """Within half a stored unit (5e-5 reflectance): pixels with an odd count of valid observations
    are one stored value either way, even counts are rounded to the encoding once."""
    tile, period = TileGrid().tile(TILE), parse_periods(PERIOD)[0]
    fly = CubeSource(str(stores["none"])).read(tile, period, 0, 0.0)
    stored = CubeSource(str(stores["median"])).read(tile, period, 0, 0.0)
    assert [(g.collection, g.gsd_m, g.bands) for g in fly.groups] == [
        (g.collection, g.gsd_m, g.bands) for g in stored.groups
    ]
    assert stored.input_items == fly.input_items
    assert all(n == 1 for n in stored.observations.values()) and max(fly.observations.values()) > 2
    for a, b in zip(fly.groups, stored.groups):
        np.testing.assert_array_equal(np.isnan(a.pixels), np.isnan(b.pixels))
        np.testing.assert_allclose(b.pixels, a.pixels, rtol=0, atol=0.5e-4 + 1e-6)

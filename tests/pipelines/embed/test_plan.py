"""Planning reads cube completion records for the tiles of the plan only: which tiles are recorded from
listings of their ``<epsg>_<ix>_`` columns, and records only until their groups cover the spec's
(object requests counted on moto S3)."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines import storage
from pipelines.cubes import CubeSpec, CubeStore
from pipelines.embed import CubeSource
from pipelines.embed.plan import RECORD_BATCH, _cube_records
from pipelines.testing import cube_record, spread_tiles
from pipelines.tiling import Tile, TileGrid
from tests.services.s3 import RequestCounter

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = CubeSpec(grid=TileGrid(), collections=("sentinel-2-l2a", "landsat-c2-l2"))


def _cube_store(s3_bucket: Any, name: str, tiles: list[Tile]) -> str:
    url = s3_bucket.url(name)
    opts = s3_bucket.storage_options
    store = CubeStore(url, opts)
    store.ensure_root(SPEC)
    storage.write_json_many(
        {storage.join(url, "_tiles", f"{t.tile_id}.json"): cube_record(t, SPEC) for t in tiles}, opts
    )
    return url


def test_plan_of_3_tiles_costs_the_same_requests_whatever_the_store_size(s3_bucket: Any) -> None:
    opts = s3_bucket.storage_options
    counter = RequestCounter(storage.filesystem(s3_bucket.url("x"), opts)[0])
    counts = {}
    for n in (6, 30):
        tiles = spread_tiles(n)
        url = _cube_store(s3_bucket, f"cubes{n}", tiles)
        plan = [t.tile_id for t in tiles[-3:]] + ["32631_1_1"]  # the last has no cube
        with counter:
            recorded, records = _cube_records(CubeSource(url, opts), plan)
        counts[n] = dict(counter.by_method)
        columns = {t.rsplit("_", 1)[0] for t in plan}
        assert set(recorded) == {t.tile_id for t in tiles if t.tile_id.rsplit("_", 1)[0] in columns}
        assert set(plan[:3]) <= set(recorded) and all(m > 0 for m in recorded.values())  # + record times
        assert sorted(records) == sorted(plan[:3])
        assert records[plan[0]]["groups"] == cube_record(tiles[-3], SPEC)["groups"]
    assert counts[6] == counts[30], counts
    # the store's existence + root metadata, 3 column listings (+1 for the absent tile), 3 record GETs
    assert sum(counts[30].values()) <= 4 + 4 + 3, counts


def test_plan_reads_records_only_until_the_spec_groups_are_covered(s3_bucket: Any) -> None:
    opts = s3_bucket.storage_options
    tiles = spread_tiles(RECORD_BATCH + 20)
    url = _cube_store(s3_bucket, "cubes", tiles)
    ids = [t.tile_id for t in tiles]
    recorded, records = _cube_records(CubeSource(url, opts), ids)
    assert set(recorded) == set(ids)
    assert len(records) == RECORD_BATCH  # the first batch holds every group the spec can hold
    keys = {(g["collection"], g["gsd_label"]) for r in records.values() for g in r["groups"]}
    assert keys == CubeStore(url, opts).group_keys()

    # a group that only the last tile holds is still found: nothing covers the spec, so all are read
    last = cube_record(tiles[-1], SPEC)
    rest = [g for g in last["groups"] if g["collection"] == "sentinel-2-l2a"]
    for t in tiles[:-1]:
        rec = cube_record(t, SPEC)
        rec["groups"] = rest
        storage.write_json_atomic(storage.join(url, "_tiles", f"{t.tile_id}.json"), rec, opts)
    recorded, records = _cube_records(CubeSource(url, opts), ids)
    assert len(records) == len(ids)
    assert any(g["collection"] == "landsat-c2-l2" for g in records[tiles[-1].tile_id]["groups"])

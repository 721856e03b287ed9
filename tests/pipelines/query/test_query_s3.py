"""The same synthetic store written locally and to moto S3 behaves the same."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines import storage
from pipelines.embeddings import list_complete_tiles, tile_is_complete
from pipelines.query import export, open_embeddings, select, similar
from pipelines.testing import build_synthetic_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BOX = (5.96, 44.985, 6.04, 45.015)


def test_local_and_s3_stores_agree(s3_bucket, tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    import pystac

    opts = s3_bucket.storage_options
    remote = s3_bucket.url("emb")
    local = str(tmp_path / "emb")
    a = build_synthetic_store(local, bbox=BOX)
    b = build_synthetic_store(remote, bbox=BOX, storage_options=opts)
    assert [t.tile_id for t in a.tiles] == [t.tile_id for t in b.tiles]
    assert list_complete_tiles(remote, b.version.name, storage_options=opts) == list_complete_tiles(
        local, a.version.name
    )
    assert tile_is_complete(remote, b.version.name, b.tiles[0].tile_id, 0, opts)

    el = open_embeddings(local)
    er = open_embeddings(remote, storage_options=opts)
    assert (
        er.zones == el.zones == (32631, 32632)
        and er.provenance["checkpoint_sha256"] == el.version.checkpoint_sha256
    )

    sl, sr = select(el, BOX), select(er, BOX)
    assert sl.attrs["crs"] == sr.attrs["crs"]
    np.testing.assert_array_equal(sl.values, sr.values)

    rl = similar(el, lon=5.99, lat=45.0, k=12)
    rr = similar(er, lon=5.99, lat=45.0, k=12)
    np.testing.assert_array_equal(rl.scores, rr.scores)
    assert rl.to_records() == rr.to_records()
    wl = similar(el, lon=5.99, lat=45.0, k=12, metric="whitened")  # the same sample and transform on S3
    wr = similar(er, lon=5.99, lat=45.0, k=12, metric="whitened")
    np.testing.assert_array_equal(wl.scores, wr.scores)
    assert wl.to_records() == wr.to_records()

    out = s3_bucket.url("exports", "area.parquet")
    export(er, BOX, out, storage_options=opts)
    fs, path = storage.filesystem(out, opts)
    with fs.open(path, "rb") as fh:
        table = pq.read_table(fh)
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo["columns"]["geometry"]["crs"]["id"] == {
        "authority": "OGC",
        "code": "CRS84",
    }  # token-native rows
    keys = set(zip(*(table.column(c).to_pylist() for c in ("epsg", "row", "col"))))
    assert len(keys) == len(table) > 0

    coll = pystac.Collection.from_dict(
        storage.read_json(storage.join(remote, "stac", "collection.json"), opts), migrate=False
    )
    assert coll.id == b.version.name and coll.extra_fields["emb:dimensions"] == b.version.dim
    item = storage.read_json(
        storage.join(remote, "stac", "items", b.version.name, f"{b.tiles[0].tile_id}.json"), opts
    )
    assert pystac.Item.from_dict(item).assets["embeddings"].roles == ["data", "embeddings"]

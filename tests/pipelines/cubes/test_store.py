"""One store format, one reader and writer: a cube run and the synthetic generator both write through
``CubeStore``, and the same reader calls (records, groups, group checks, windows) open both alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from pipelines.cubes import LAYOUT_VERSION, CubeStore, CubeStoreError, GroupMeta, write_cubes
from pipelines.errors import CubeDataError
from pipelines.testing import SENTINEL2, write_synthetic_cubes
from tests.pipelines.cubes.support import S2, TILE_IDS, s2_item, spec

S2_GROUPS = {(S2, "10m"), (S2, "20m"), (S2, "60m")}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("stores")
    item = s2_item(root / "items", "A", cloud_boxes=[(0.1, 0.55, 0.4, 0.9)])
    summary = write_cubes([item], TILE_IDS[:1], spec(), str(root / "production"), progress=False)
    assert summary.tiles_done == TILE_IDS[:1]
    write_synthetic_cubes(root / "synthetic", n_tiles=1, n_times=2, collections=(SENTINEL2,), empty_tiles=1)
    return {"production": str(root / "production"), "synthetic": str(root / "synthetic")}


def _schema(store: CubeStore, tile_id: str, key: tuple[str, str]) -> dict[str, Any]:
    ds = store.open_group(tile_id, *key, decode=False)
    return {
        name: (tuple(var.dims), var.dtype.kind, {k for k in var.attrs if k != "coordinates"})
        for name, var in ds.variables.items()
    }


def test_synthetic_and_production_stores_open_with_the_same_reader(stores: dict[str, str]) -> None:
    opened = {kind: CubeStore.open(url) for kind, url in stores.items()}
    records = {kind: s.tile_records() for kind, s in opened.items()}
    for kind, store in opened.items():
        assert store.root_attrs()["layout_version"] == LAYOUT_VERSION, kind
        (tile_id,) = store.complete_tiles()
        assert set(store.groups(tile_id)) == S2_GROUPS, kind
        for coll, label in store.groups(tile_id):
            lazy = store.open_group(tile_id, coll, label, lazy=True)
            meta = store.group_meta(tile_id, coll, label, lazy)
            assert isinstance(meta, GroupMeta) and meta.sensor == "sentinel-2-msi"
            assert meta.gsd_m == float(label[:-1]) and meta.band_keys[0].startswith("sentinel-2-msi/")
            n = min(meta.height, 16)
            win = store.read_window(lazy, 0, 0, 0, n, n)
            assert win.dtype == np.float32 and win.shape == (len(meta.bands), n, n)
            dense = store.open_group(tile_id, coll, label)  # dask, decoded to float32
            np.testing.assert_array_equal(win, dense["reflectance"].isel(time=0).values[:, :n, :n])
            assert np.isfinite(win).any()
    # the same record schema (written by one function) and the same group schema
    prod_tile, syn_tile = (next(iter(r)) for r in records.values())
    prod, syn = records["production"][prod_tile], records["synthetic"][syn_tile]
    assert set(prod) == set(syn)
    assert [set(g) for g in prod["groups"]] == [set(g) for g in syn["groups"]]
    for key in sorted(S2_GROUPS):
        a = _schema(opened["production"], prod_tile, key)
        b = _schema(opened["synthetic"], syn_tile, key)
        assert a.keys() == b.keys(), key
        for name in a:
            assert a[name][:2] == b[name][:2], (key, name)
        assert a["reflectance"][2] == b["reflectance"][2], key
        ra = zarr.open_array(Path(stores["production"]) / prod_tile / key[0] / key[1] / "reflectance")
        rb = zarr.open_array(Path(stores["synthetic"]) / syn_tile / key[0] / key[1] / "reflectance")
        assert ra.dtype == rb.dtype == np.int16 and ra.fill_value == rb.fill_value == -32768
        assert ra.chunks[:2] == rb.chunks[:2] == (1, 1) and ra.shards is not None and rb.shards is not None
    assert opened["synthetic"].empty_tiles() == ["TE00"]
    assert opened["synthetic"].open_tile("TE00") == {}


def test_reader_errors_are_cube_data_errors(stores: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(CubeDataError, match="does not exist"):
        CubeStore.open(str(tmp_path / "nope"))
    store = CubeStore.open(stores["synthetic"])
    with pytest.raises(CubeStoreError, match="no 'complete' record"):
        store.open_tile("T999")
    bad = tmp_path / "bad"
    write_synthetic_cubes(bad, n_tiles=1, n_times=1, collections=(SENTINEL2,))
    (bad / "_tiles" / "T000.json").write_text('{"status": "half-done"}')
    with pytest.raises(CubeDataError, match="no valid status"):
        CubeStore.open(str(bad)).complete_tiles()
    (bad / "_tiles" / "T000.json").write_text("{not json")
    with pytest.raises(CubeDataError, match=r"unreadable completion record T000\.json"):
        CubeStore.open(str(bad)).tile_records()


def test_spec_fingerprint_follows_registry_content_not_prose(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry digest in a store's fingerprint changes with what the registry says about pixels
    (a scale) and not with prose (a sensor description) or the code's class names."""
    import dataclasses

    from pipelines.cubes import CubeSpec
    from pipelines.tiling import TileGrid

    spec = CubeSpec(grid=TileGrid(7680.0), collections=("sentinel-2-l2a",), catalog="earth-search")
    base, cs = spec.fingerprint, spec.collection_spec("sentinel-2-l2a")
    reworded = dataclasses.replace(cs, sensor=dataclasses.replace(cs.sensor, description="other words"))
    monkeypatch.setattr(CubeSpec, "collection_spec", lambda self, c: reworded)
    assert spec.fingerprint == base
    monkeypatch.setattr(
        CubeSpec, "collection_spec", lambda self, c: dataclasses.replace(cs, scale=cs.scale * 2)
    )
    assert spec.fingerprint != base


def test_a_recorded_tile_without_its_group_names_the_tile_and_the_fix(
    built: dict[str, Any], tmp_path: Path
) -> None:
    """Finding 3 (readers): a store damaged so that a record outlives its group data (what two
    unleased writers once produced) gives one line naming the tile, not a Zarr traceback."""
    import shutil

    out = tmp_path / "cubes"
    shutil.copytree(built["out"], out)
    store = CubeStore.open(str(out))
    tile_id = store.complete_tiles()[0]
    collection, label = store.groups(tile_id)[0]
    shutil.rmtree(out / tile_id / collection / label)
    with pytest.raises(
        CubeStoreError, match=rf"tile {tile_id} is recorded complete but its group .* is missing"
    ):
        store.open_group(tile_id, collection, label)

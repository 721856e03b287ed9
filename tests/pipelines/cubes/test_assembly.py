"""Cube assembly and the Zarr store on small synthetic scenes: groups, scale/offset, masks, solar-day
fusion, layout, exactly-once reruns, and every bad-input case (each skipped and recorded)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from pipelines.cubes import LAYOUT_VERSION, CubeStore, CubeStoreError, assemble_tile, write_cubes
from pipelines.cubes.reading import read_attempts
from pipelines.outputs.conventions import dataset_convention_attrs
from pipelines.testing import make_item, reflectance_model
from pipelines.tiling import TileGrid
from tests.pipelines.cubes.support import (
    GRID,
    S2,
    TILE_IDS,
    all_metadata,
    assert_matches_oracle,
    assert_stores_equal,
    oracle,
    s2_item,
    spec,
    strict_json,
)

S2_10M = ("B02", "B03", "B04", "B08")
S2_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")
S2_60M = ("B01", "B09")


def _tile(i: int = 0):
    return GRID.tile(TILE_IDS[i])


def test_groups_bands_and_metadata(scene: dict[str, Any]) -> None:
    tile = _tile(0)
    cube = assemble_tile(tile, [scene["A"], scene["B"]], spec())
    assert list(cube) == [(S2, "10m"), (S2, "20m"), (S2, "60m")]
    for label, bands, px in (("10m", S2_10M, 192), ("20m", S2_20M, 96), ("60m", S2_60M, 32)):
        enc = cube.encoded[(S2, label)]
        ds = cube[(S2, label)]
        assert enc["reflectance"].dtype == np.int16
        assert enc["reflectance"].attrs["scale_factor"] == 1e-4
        assert enc["reflectance"].attrs["_FillValue"] == -32768
        assert ds["reflectance"].dtype == np.float32
        assert ds["reflectance"].dims == ("time", "band", "y", "x")
        assert ds.sizes == {"time": 2, "band": len(bands), "y": px, "x": px}
        assert tuple(str(b) for b in ds["band"].values) == bands
        assert ds.attrs["sensor"] == "sentinel-2-msi" and ds.attrs["collection"] == S2
        assert ds.attrs["gsd_m"] == float(label[:-1])
        assert ds["center_wavelength_nm"].dims == ("band",) and ds["fwhm_nm"].dims == ("band",)
        assert list(ds["source_items"].values) == ["A", "B"]
        assert ds.odc.geobox == tile.geobox(float(label[:-1]))
        ref = ds["spatial_ref"].attrs
        assert (
            "crs_wkt" in ref and "GeoTransform" in ref and ref["grid_mapping_name"] == "transverse_mercator"
        )
    blue = cube[(S2, "10m")].sel(band="B02")
    assert float(blue["center_wavelength_nm"]) == pytest.approx(492.4)
    assert str(blue["common_name"].values) == "blue"
    assert cube.item_ids == ["A", "B"]
    assert dict(cube.items()).keys() == set(cube)  # a Mapping of decoded datasets
    assert cube.skipped == []


def test_scale_offset_per_item_and_masks(scene: dict[str, Any]) -> None:
    tile = _tile(1)  # the upper-left tile: has the cloud box and the no-data strip
    ds = assemble_tile(tile, [scene["A"], scene["B"]], spec())[(S2, "10m")].load()
    gbox = tile.geobox(10)
    rows, cols = np.meshgrid(np.arange(192), np.arange(192), indexing="ij")
    x = gbox.transform.c + (cols + 0.5) * 10
    y = gbox.transform.f - (rows + 0.5) * 10
    for b, band in enumerate(S2_10M):
        truth = reflectance_model(
            [*S2_10M[:0], "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08"].index(band), x, y, 1
        )
        # B (baseline 05.00: DNs carry +1000) decodes to the same physical reflectance
        got = ds["reflectance"].isel(time=1, band=b).values
        np.testing.assert_allclose(got, truth, atol=0.51e-4)
    a = ds["reflectance"].isel(time=0).values
    assert np.isnan(a).any() and np.isfinite(a).any()
    for b, band in enumerate(S2_10M):
        exp, amb = oracle(scene["A"], S2, band, tile, 10.0, rows.ravel(), cols.ravel())
        assert_matches_oracle(a[b].ravel(), exp, amb)
    assert float(ds["valid_fraction"][1]) == 1.0
    assert 0.0 < float(ds["valid_fraction"][0]) < 1.0
    # reflectance stays physical
    valid = ds["reflectance"].values[np.isfinite(ds["reflectance"].values)]
    assert valid.min() >= 0.0 and valid.max() <= 1.0


def test_same_solar_day_items_are_fused_first_valid(scene: dict[str, Any]) -> None:
    tile = _tile(1)
    ds = assemble_tile(tile, [scene["A2"], scene["A"]], spec())[(S2, "10m")].load()
    assert ds.sizes["time"] == 1
    assert list(ds["source_items"].values) == ["A,A2"]
    assert str(ds["solar_day"].values[0]) == "2023-06-01"
    assert ds["time"].values[0] == np.datetime64("2023-06-01T10:30:00")
    only_a = assemble_tile(tile, [scene["A"]], spec())[(S2, "10m")].load()["reflectance"].isel(time=0).values
    only_a2 = (
        assemble_tile(tile, [scene["A2"]], spec())[(S2, "10m")].load()["reflectance"].isel(time=0).values
    )
    fused = ds["reflectance"].isel(time=0).values
    a_valid = np.isfinite(only_a)
    np.testing.assert_array_equal(fused[a_valid], only_a[a_valid])  # A first (earlier)
    np.testing.assert_array_equal(fused[~a_valid], only_a2[~a_valid])  # A2 fills A's gaps


def test_float16_encoding(scene: dict[str, Any]) -> None:
    tile = _tile(1)
    i16 = assemble_tile(tile, [scene["A"]], spec())[(S2, "20m")].load()["reflectance"].values
    f16 = assemble_tile(tile, [scene["A"]], spec(encoding="float16"))
    enc = f16.encoded[(S2, "20m")]
    assert enc["reflectance"].dtype == np.float16 and "_FillValue" not in enc["reflectance"].attrs
    got = f16[(S2, "20m")].load()["reflectance"].values
    assert got.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(got), np.isnan(i16))
    np.testing.assert_allclose(got, i16, rtol=1e-3, atol=1e-4)


def test_proj_code_and_proj_epsg_items_agree(tmp_path: Path) -> None:
    a = s2_item(tmp_path / "e", "P", proj_style="epsg")
    b = s2_item(tmp_path / "c", "P", proj_style="code")
    tile = _tile(2)
    x = assemble_tile(tile, [a], spec())[(S2, "60m")].load()
    y = assemble_tile(tile, [b], spec())[(S2, "60m")].load()
    xr.testing.assert_identical(x, y)


# ---------------------------------------------------------------------------------------------
# store: layout, read back, exactly once


def test_write_and_read_back(built: dict[str, Any]) -> None:
    summary = built["summary"]
    assert sorted(summary.tiles_done) == sorted(TILE_IDS)
    assert summary.tiles_failed == {} and summary.exit_code == 0
    store = CubeStore.open(str(built["out"]))
    assert store.complete_tiles() == sorted(TILE_IDS)
    tile = GRID.tile(TILE_IDS[1])
    cube = assemble_tile(tile, built["items"], spec())
    got = store.open_tile(tile.tile_id)
    assert set(got) == set(cube)
    for key in cube:
        expected = cube[key].load()
        ds = got[key].load()
        assert ds["reflectance"].dtype == np.float32
        # the store adds the proj:/spatial: Zarr conventions (from the group's own grid mapping)
        conventions = dataset_convention_attrs(expected)
        assert {k: ds.attrs[k] for k in conventions} == conventions
        ds.attrs = {k: v for k, v in ds.attrs.items() if k not in conventions}
        xr.testing.assert_identical(ds.drop_encoding(), expected.drop_encoding())
        assert ds.odc.geobox == tile.geobox(ds.attrs["gsd_m"])
    rec = store.record(tile.tile_id)
    assert rec["status"] == "complete" and rec["tile_id"] == tile.tile_id
    assert rec["items"] == ["A", "B"] and rec["skipped"] == []
    assert [g["gsd_label"] for g in rec["groups"]] == ["10m", "20m", "60m"]
    assert rec["groups"][0]["source_items"] == ["A", "B"]


def test_layout_chunks_shards_and_strict_json(built: dict[str, Any]) -> None:
    out: Path = built["out"]
    meta = all_metadata(out)
    assert meta
    for path in meta:
        strict_json(path)  # no NaN/Infinity anywhere in attributes or records
    arr = strict_json(out / TILE_IDS[0] / S2 / "10m" / "reflectance" / "zarr.json")
    assert arr["zarr_format"] == 3 and arr["data_type"] == "int16" and arr["fill_value"] == -32768
    assert arr["chunk_grid"]["configuration"]["chunk_shape"] == [
        1,
        4,
        192,
        192,
    ]  # one shard: a tile's time step
    (codec,) = arr["codecs"]
    assert codec["name"] == "sharding_indexed"
    assert codec["configuration"]["chunk_shape"] == [1, 1, 192, 192]
    assert arr["dimension_names"] == ["time", "band", "y", "x"]
    root = strict_json(out / "zarr.json")
    assert root["attributes"]["aom_cubes"]["layout_version"] == LAYOUT_VERSION == 2
    assert (out / "_tiles" / f"{TILE_IDS[0]}.json").exists()


def test_rerun_skips_complete_tiles_and_refuses_another_layout(built: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(built["out"], out)  # the shared store stays as built
    again = write_cubes(built["items"], TILE_IDS, spec(), str(out), progress=False)
    assert again.tiles_done == [] and set(again.tiles_skipped) == set(TILE_IDS)
    assert again.exit_code == 0
    with pytest.raises(CubeStoreError, match="different spec"):
        write_cubes(built["items"], TILE_IDS, spec(encoding="float16"), str(out), progress=False)
    assert_stores_equal(CubeStore.open(str(out)), CubeStore.open(str(built["out"])))


def test_incomplete_tile_is_deleted_and_redone(built: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(built["out"], out)
    victim = TILE_IDS[2]
    (out / "_tiles" / f"{victim}.json").unlink()  # as if killed before the record was written
    junk = out / victim / S2 / "10m" / "reflectance" / "c" / "0" / "0" / "0" / "0"
    junk.write_bytes(b"half a shard")
    store = CubeStore.open(str(out))
    assert victim not in store.complete_tiles()  # a reader never sees it
    summary = write_cubes(built["items"], TILE_IDS, spec(), str(out), progress=False)
    assert summary.tiles_done == [victim]
    assert_stores_equal(store, CubeStore.open(str(built["out"])))


def test_reading_an_incomplete_tile_is_refused(built: dict[str, Any]) -> None:
    store = CubeStore.open(str(built["out"]))
    with pytest.raises(CubeStoreError):
        store.open_tile("32631_1_1")
    with pytest.raises(CubeStoreError):
        CubeStore.open(str(built["out"] / "nope"))


# ---------------------------------------------------------------------------------------------
# bad inputs and faults: each is skipped and recorded, the run finishes


def _one_tile_run(
    items: list[dict[str, Any]], out: Path, read_options: dict[str, Any] | None = None, **kw: Any
):
    return write_cubes(items, [TILE_IDS[0]], spec(**kw), str(out), progress=False, read_options=read_options)


def test_asset_404_is_skipped_and_recorded(scene: dict[str, Any], tmp_path: Path) -> None:
    broken = copy.deepcopy(scene["B"])
    broken["id"] = "B404"
    broken["assets"]["red"]["href"] = str(tmp_path / "gone" / "B04.tif")
    summary = _one_tile_run([scene["A"], broken], tmp_path / "out")
    assert summary.tiles_done == [TILE_IDS[0]]
    (skip,) = summary.items_skipped
    assert skip["item"] == "B404" and skip["asset"] == "red" and "cannot open" in skip["reason"]
    rec = CubeStore.open(str(tmp_path / "out")).record(TILE_IDS[0])
    groups = {g["gsd_label"]: g for g in rec["groups"]}
    assert groups["10m"]["source_items"] == ["A"]  # B404 left out of the group needing B04 ...
    assert groups["20m"]["source_items"] == ["A", "B404"]  # ... but kept where its assets are fine
    assert rec["skipped"] == [{"item": "B404", "asset": "red", "reason": skip["reason"]}]


def test_unreachable_asset_fails_the_tile_for_a_retry(scene: dict[str, Any], tmp_path: Path) -> None:
    from tests.services.ports import free_port

    far = copy.deepcopy(scene["B"])
    far["id"] = "BFAR"
    far["assets"]["scl"]["href"] = f"http://127.0.0.1:{free_port()}/SCL.tif"  # nothing listens there
    fast = read_attempts(2)  # one retry, as the default's five fail: in 0.5 s instead of 7.5 s
    summary = _one_tile_run([scene["A"], far], tmp_path / "out", fast)
    assert summary.tiles_failed and "unreachable" in summary.tiles_failed[TILE_IDS[0]]
    assert summary.exit_code == 1  # nothing useful produced
    assert CubeStore.open(str(tmp_path / "out")).complete_tiles() == []
    # opting in: unreachable assets are left out like missing ones
    summary = _one_tile_run([scene["A"], far], tmp_path / "out2", fast, skip_unreachable=True)
    assert summary.tiles_done == [TILE_IDS[0]]
    assert summary.items_skipped[0]["item"] == "BFAR" and summary.items_skipped[0].get("transient")


def test_truncated_and_corrupt_cogs_are_left_out(scene: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path / "items"
    trunc = s2_item(root, "TRUNC", datetime="2023-06-21T10:30:00Z")
    corrupt = s2_item(root, "CORRUPT", datetime="2023-07-01T10:30:00Z")
    path = Path(trunc["assets"]["nir"]["href"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, tiles cut off
    Path(corrupt["assets"]["swir16"]["href"]).write_bytes(b"II*\x00" + b"\x00garbage" * 50)
    summary = _one_tile_run([scene["A"], trunc, corrupt], tmp_path / "out")
    assert summary.tiles_done == [TILE_IDS[0]]
    reasons = {(s["item"], s["asset"]): s["reason"] for s in summary.items_skipped}
    assert set(reasons) == {("TRUNC", "nir"), ("CORRUPT", "swir16")}
    assert "read failed" in reasons[("TRUNC", "nir")]
    assert "cannot open" in reasons[("CORRUPT", "swir16")]
    rec = CubeStore.open(str(tmp_path / "out")).record(TILE_IDS[0])
    groups = {g["gsd_label"]: g["source_items"] for g in rec["groups"]}
    assert groups["10m"] == ["A", "CORRUPT"]
    assert groups["20m"] == ["A", "TRUNC"]
    assert groups["60m"] == ["A", "TRUNC", "CORRUPT"]


def test_item_without_projection_metadata(scene: dict[str, Any], tmp_path: Path) -> None:
    bare = s2_item(tmp_path / "items", "NOPROJ", proj_style="none", datetime="2023-06-21T10:30:00Z")
    summary = _one_tile_run([scene["A"], bare], tmp_path / "out")
    assert summary.tiles_done == [TILE_IDS[0]]
    (skip,) = {(s["item"], s["reason"].split(" (")[0]) for s in summary.items_skipped}
    assert skip == ("NOPROJ", "no projection metadata")
    # opting in: the grid is read from the file header, and the result equals the proj'd item's
    tile = _tile(0)
    with_proj = s2_item(tmp_path / "items2", "NOPROJ", datetime="2023-06-21T10:30:00Z")
    got = assemble_tile(tile, [bare], spec(missing_proj="read_header"))
    ref = assemble_tile(tile, [with_proj], spec())
    assert got.skipped == []
    xr.testing.assert_identical(got[(S2, "20m")].load(), ref[(S2, "20m")].load())


def test_band_missing_from_an_item(scene: dict[str, Any], tmp_path: Path) -> None:
    item = copy.deepcopy(scene["B"])
    item["id"] = "NOCOASTAL"
    del item["assets"]["coastal"]
    summary = _one_tile_run([scene["A"], item], tmp_path / "out")
    (skip,) = summary.items_skipped
    assert skip["item"] == "NOCOASTAL" and skip["asset"] == "coastal" and "missing" in skip["reason"]
    rec = CubeStore.open(str(tmp_path / "out")).record(TILE_IDS[0])
    groups = {g["gsd_label"]: g["source_items"] for g in rec["groups"]}
    assert groups == {"10m": ["A", "NOCOASTAL"], "20m": ["A", "NOCOASTAL"], "60m": ["A"]}


def test_missing_quality_asset_drops_the_item(scene: dict[str, Any], tmp_path: Path) -> None:
    item = copy.deepcopy(scene["B"])
    item["id"] = "NOSCL"
    del item["assets"]["scl"]
    cube = assemble_tile(_tile(0), [item], spec())
    assert len(cube) == 0
    assert [(s.item, s.asset) for s in cube.skipped] == [("NOSCL", "scl")]


def test_all_cloud_scene(tmp_path: Path) -> None:
    cloudy = s2_item(tmp_path / "items", "CLOUDY", cloud_boxes=[(0.0, 0.0, 1.0, 1.0)])
    summary = _one_tile_run([cloudy], tmp_path / "out")
    assert summary.tiles_empty == {TILE_IDS[0]: "all pixels cloud, shadow or nodata"}
    assert summary.exit_code == 1
    store = CubeStore.open(str(tmp_path / "out"))
    rec = store.record(TILE_IDS[0])
    assert rec["status"] == "empty" and rec["groups"] == [] and len(rec["dropped_groups"]) == 3
    assert store.open_tile(TILE_IDS[0]) == {}
    assert store.complete_tiles() == [] and store.empty_tiles() == [TILE_IDS[0]]
    assert store.complete_tiles(include_empty=True) == store.recorded_tiles() == [TILE_IDS[0]]
    # with a clear day too, the group stays and the cloudy day shows valid_fraction 0
    clear = s2_item(tmp_path / "items", "CLEAR", datetime="2023-06-11T10:30:00Z")
    summary = _one_tile_run([cloudy, clear], tmp_path / "out2")
    assert summary.tiles_done == [TILE_IDS[0]]
    ds = CubeStore.open(str(tmp_path / "out2")).open_group(TILE_IDS[0], S2, "10m")
    assert ds["valid_fraction"].values.tolist() == [0.0, 1.0]
    assert np.isnan(ds["reflectance"].isel(time=0).values).all()


def test_items_across_a_utm_zone_boundary(tmp_path: Path) -> None:
    from pyproj import Transformer

    grid = TileGrid(1920.0)
    items = []
    for day, epsg in ((1, 32631), (2, 32632)):  # one scene per zone, both straddling 6E
        x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(6.0, 45.0)
        x0, y0 = (x // 60) * 60 - 1920, (y // 60) * 60 - 1920
        items.append(
            make_item(
                tmp_path / "items",
                item_id=f"Z{epsg}",
                epsg=epsg,
                bounds=(x0, y0, x0 + 3840, y0 + 3840),
                datetime=f"2023-06-0{day}T10:30:00Z",
            )
        )
    tiles = grid.tiles_for_items(items)
    assert {t.epsg for t in tiles} == {32631, 32632}
    # build a few: zone-31 tiles under the zone-32 scene, and one zone-32 tile
    crossed = [t for t in grid.tiles_for_items([items[1]]) if t.epsg == 32631][:2]
    assert crossed
    todo = [*crossed, next(t for t in tiles if t.epsg == 32632)]
    summary = write_cubes(items, todo, spec(grid=grid), str(tmp_path / "out"), progress=False)
    assert not summary.tiles_failed and len(summary.tiles_done) == len(todo)
    store = CubeStore.open(str(tmp_path / "out"))
    tile = crossed[0]
    assert "Z32632" in store.record(tile.tile_id)["groups"][1]["source_items"]
    ds = store.open_group(tile.tile_id, S2, "20m").load()
    t = list(ds["source_items"].values).index("Z32632")
    rows, cols = (a.ravel() for a in np.meshgrid(np.arange(96), np.arange(96), indexing="ij"))
    exp, amb = oracle(items[1], S2, "B05", tile, 20.0, rows, cols)
    got = ds["reflectance"].isel(time=t, band=0).values.ravel()
    assert np.isfinite(got).sum() > 100
    assert_matches_oracle(got, exp, amb, min_fraction=0.99)


def test_items_across_the_antimeridian(tmp_path: Path) -> None:
    from pyproj import Transformer

    grid = TileGrid(1920.0)
    items = []
    for epsg, lon in ((32760, 179.99), (32701, -179.99)):
        x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, -16.5)
        x0, y0 = (x // 60) * 60 - 1920, (y // 60) * 60 - 1920
        items.append(
            make_item(
                tmp_path / "items", item_id=f"AM{epsg}", epsg=epsg, bounds=(x0, y0, x0 + 3840, y0 + 3840)
            )
        )
    tiles = grid.tiles_for_items(items)
    assert {t.epsg for t in tiles} == {32760, 32701}
    assert len(tiles) < 40
    crossing = [t for t in tiles if t.footprint_wgs84()["type"] == "MultiPolygon"]
    assert {t.epsg for t in crossing} == {32760, 32701}
    todo = [next(t for t in crossing if t.epsg == e) for e in (32760, 32701)]
    summary = write_cubes(items, todo, spec(grid=grid), str(tmp_path / "out"), progress=False)
    assert not summary.tiles_failed and len(summary.tiles_done) == 2
    store = CubeStore.open(str(tmp_path / "out"))
    for tile in todo:  # each straddles 180 degrees and holds both scenes' pixels
        rec = store.record(tile.tile_id)
        assert rec["items"] == ["AM32701", "AM32760"]
    ds = store.open_group(todo[0].tile_id, S2, "60m").load()
    assert np.isfinite(ds["reflectance"].values).any()

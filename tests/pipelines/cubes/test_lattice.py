"""Group lattices on the sensors' native pixel grids (``pipelines/cubes/lattice.py``): planned from the
recorded real items, and pasted exactly by cube builds (every value a source pixel, none moved)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pyproj import Transformer

from pipelines.cubes import (
    CubeStore,
    CubeStoreError,
    assemble_tile,
    lattice_shift,
    native_lattice,
    write_cubes,
)
from pipelines.cubes.group_load import encode_block
from pipelines.registry import load_registry
from pipelines.testing import make_item
from pipelines.tiling import TileGrid, zone_of_epsg
from tests.conftest import REPO_ROOT
from tests.pipelines.cubes.support import GRID, LANDSAT, S2, TILE_IDS, X0, Y0, spec

STAC_ITEMS = REPO_ROOT.parent / "shared" / "data" / "stac-items"


def _recorded_items() -> list[dict[str, Any]]:
    if not (STAC_ITEMS / "index.json").exists():
        pytest.skip(f"recorded STAC items not found at {STAC_ITEMS} (../shared/data/stac-items)")
    entries = json.loads((STAC_ITEMS / "index.json").read_text())["items"]
    return [json.loads((STAC_ITEMS / e["file"]).read_text()) for e in entries]


def _epsg(item: dict[str, Any]) -> int | None:
    p = item.get("properties") or {}
    code = p.get("proj:epsg") or str(p.get("proj:code") or "EPSG:0").split(":")[1]
    return int(code) or None


def test_planned_lattices_of_real_items_are_their_native_pixel_grids() -> None:
    """For every recorded Landsat C2, Sentinel-2 and HLS item and every 10/20/30/60 m asset, the planned
    group lattice of tiles of the item's zone has its pixel edges exactly on the item's pixel edges
    (checked through PROJ, not through the false-northing rule the planner uses); the shifts are the
    ones docs/cubes.md tabulates."""
    grid = TileGrid()
    shifts: dict[tuple[str, float, str], set[tuple[float, float]]] = defaultdict(set)
    checked = 0
    for item in _recorded_items():
        coll = str(item.get("collection", ""))
        kind = next((k for k in ("landsat", "sentinel-2", "hls") if k in coll), None)
        epsg = _epsg(item)
        if kind is None or epsg is None:
            continue
        zone = zone_of_epsg(epsg)[0]
        tiles = [t for t in grid.tiles_for_items([item]) if t.zone == zone]
        for key, asset in (item.get("assets") or {}).items():
            t = asset.get("proj:transform") or item["properties"].get("proj:transform")
            if not t or abs(t[0]) not in (10, 20, 30, 60):
                continue
            gsd = float(abs(t[0]))
            for tile in tiles[:: max(1, len(tiles) // 3)]:
                lat = native_lattice(tile, gsd, [item], [key])
                assert lat.basis.startswith("native: pixel edges of 1 of 1 items"), lat.basis
                gt = tile.geobox(gsd, lat.shift_m).transform
                cx, cy = Transformer.from_crs(epsg, tile.epsg, always_xy=True).transform(t[2], t[5])
                for edge, corner in ((gt.c, cx), (gt.f, cy)):
                    k = (edge - corner) / gsd
                    assert abs(k - round(k)) < 1e-6, (item["id"], key, tile.tile_id, lat)
                case = "same CRS" if tile.epsg == epsg else "other hemisphere"
                shifts[(kind, gsd, case)].add(lat.shift_m)
                checked += 1
    assert checked > 100
    assert dict(shifts) == {
        ("landsat", 30.0, "same CRS"): {(-15.0, -15.0)},
        ("landsat", 30.0, "other hemisphere"): {(-15.0, -5.0)},  # southern scenes in north-zone CRSs
        ("sentinel-2", 10.0, "same CRS"): {(0.0, 0.0)},
        ("sentinel-2", 20.0, "same CRS"): {(0.0, 0.0)},
        ("sentinel-2", 60.0, "same CRS"): {(0.0, 0.0), (0.0, -20.0)},  # MGRS origins at ...040 m northing
        ("hls", 30.0, "other hemisphere"): {(0.0, 10.0)},  # HLS T19LDD comes in EPSG:32619 south of 0
    }


def test_majority_grid_wins_and_no_evidence_keeps_the_tile_origin() -> None:
    tile = GRID.tile(TILE_IDS[0])
    x, y = tile.bounds[0], tile.bounds[3]

    def item(i: str, dx: float, epsg: int = 32631, gsd: float = 30.0) -> dict[str, Any]:
        tr = [gsd, 0.0, x + dx, 0.0, -gsd, y + dx]
        return {"id": i, "properties": {"proj:epsg": epsg}, "assets": {"red": {"proj:transform": tr}}}

    lat = native_lattice(tile, 30.0, [item("a", 15), item("b", 15), item("c", 0)], ["red"])
    assert lat.shift_m == (-15.0, -15.0) and "2 of 3 items" in lat.basis and "resampled" in lat.basis
    lat = native_lattice(tile, 30.0, [item("a", 15), item("c", 0)], ["red"])
    assert lat.shift_m == (0.0, 0.0)  # a tie: the tile origin
    lat = native_lattice(tile, 30.0, [item("a", 15, epsg=32632), item("b", 15, gsd=10.0)], ["red"])
    assert lat.shift_m == (0.0, 0.0) and lat.basis.startswith("tile origin: no item on a 30 m grid")
    assert "another UTM zone" in lat.basis and "not a north-up 30 m grid" in lat.basis
    assert lattice_shift({}) == (0.0, 0.0)  # layout-1 groups: through the tile origin


def _read(path: str) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1)


def _expected(item: dict[str, Any], cs: Any, bands: tuple[str, ...], rows: slice, cols: slice) -> np.ndarray:
    """The int16 cube values of a crop of the source files: each source pixel encoded as it is."""
    dn = np.stack([_read(item["assets"][cs.assets[b]]["href"])[rows, cols] for b in bands])[None]
    qa = np.stack([_read(item["assets"][a]["href"])[rows, cols] for a in cs.mask.mask_assets()])[None]
    conv = cs.conversion(item["properties"])
    return encode_block(dn, qa, conversion=conv, mask=cs.mask, encoding="int16")


def _landsat(root: Path, epsg: int, left: float, top: float, n: int, **kw: Any) -> dict[str, Any]:
    bounds = (left, top - n * 30.0, left + n * 30.0, top)
    item = make_item(root, item_id=f"LS{epsg}", collection=LANDSAT, epsg=epsg, bounds=bounds, **kw)
    item["properties"]["platform"] = "landsat-8"
    return item


def test_landsat_pixels_15m_off_the_tile_grid_are_pasted_at_their_true_centres(tmp_path: Path) -> None:
    """A Landsat-like scene with pixel edges at 15 m (mod 30 m), built into a store: the group's lattice
    is shifted (-15, -15) m, its coordinates are the source pixel centres and every value is the
    source pixel's own (no half-pixel shift, masks included)."""
    tile = GRID.tile(TILE_IDS[0])  # 64 x 64 px at 30 m
    item = _landsat(
        tmp_path / "src", 32631, X0 - 15.0, Y0 + 3840.0 + 15.0, 129, cloud_boxes=[(0.2, 0.0, 0.3, 0.4)]
    )
    out = tmp_path / "cubes"
    summary = write_cubes([item], [tile.tile_id], spec(LANDSAT), str(out), progress=False)
    assert summary.tiles_done == [tile.tile_id], summary.tiles_failed
    store = CubeStore.open(str(out))
    ds = store.open_group(tile.tile_id, LANDSAT, "30m", decode=False).load()
    assert ds.attrs["lattice_shift_m"] == [-15.0, -15.0] and ds.attrs["lattice"].startswith("native:")
    assert store.record(tile.tile_id)["groups"][0]["lattice_shift_m"] == [-15.0, -15.0]
    assert ds.odc.geobox == tile.geobox(30.0, (-15.0, -15.0))
    # the group's proj:/spatial: Zarr conventions say the same shifted grid
    assert ds.attrs["spatial:transform"] == list(tile.geobox(30.0, (-15.0, -15.0)).transform)[:6]
    assert ds.attrs["proj:code"] == "EPSG:32631"
    np.testing.assert_array_equal(ds["x"].values, X0 + 30.0 * np.arange(64))  # native centres: 0 mod 30
    np.testing.assert_array_equal(ds["y"].values, Y0 + 1920.0 - 30.0 * (np.arange(64) + 1))
    meta = store.group_meta(tile.tile_id, LANDSAT, "30m", ds)
    assert (meta.x0, meta.y0) == (X0 - 15.0, Y0 + 1920.0 - 15.0)
    cs = spec(LANDSAT).collection_spec(LANDSAT)
    bands = tuple(str(b) for b in ds["band"].values)
    # the group's top row is source row (Y0 + 3855 - (Y0 + 1905)) / 30 = 65, its left column source column 0
    want = _expected(item, cs, bands, slice(65, 129), slice(0, 64))
    got = ds["reflectance"].values
    assert (want == -32768).any() and (want != -32768).any()  # clouds and clear pixels both compared
    np.testing.assert_array_equal(got, want)


def test_southern_landsat_scene_in_a_north_zone_crs_is_pasted_exactly(tmp_path: Path) -> None:
    """Landsat scenes south of the equator come in EPSG:326zz with negative northings; on a 327zz tile the
    grid is the same one moved by the 10 000 000 m false northing: shift (-15, -5) m, values exact."""
    grid = TileGrid(1920.0)
    tile = grid.tile_at(3.1, -30.0)
    assert tile.epsg == 32731
    left, top = tile.bounds[0], tile.bounds[3]
    north_top = (top - 1e7) // 30 * 30 + 15 + 60  # a Landsat edge (15 mod 30 in 32631) above the tile
    item = _landsat(
        tmp_path / "src", 32631, left - 15.0 - 60, north_top, 70, cloud_boxes=[(0.5, 0.5, 0.7, 0.7)]
    )
    cube = assemble_tile(tile, [item], spec(LANDSAT, grid=grid))
    ds = cube.encoded[(LANDSAT, "30m")].load()
    assert ds.attrs["lattice_shift_m"] == [-15.0, -5.0]
    assert ds.odc.geobox == tile.geobox(30.0, (-15.0, -5.0))
    r0 = round((north_top + 1e7 - (top - 5.0)) / 30.0)
    cs = spec(LANDSAT).collection_spec(LANDSAT)
    want = _expected(item, cs, tuple(str(b) for b in ds["band"].values), slice(r0, r0 + 64), slice(2, 66))
    np.testing.assert_array_equal(ds["reflectance"].values, want)


def test_sentinel2_60m_bands_of_an_mgrs_tile_with_origin_northing_040(tmp_path: Path) -> None:
    """MGRS tiles whose origin northing is 40 (mod 60): the 60 m group is shifted (0, -20) m and pasted
    exactly, the 10 m and 20 m groups stay on the tile lattice."""
    tile = GRID.tile(TILE_IDS[0])
    bounds = (X0, Y0 - 20.0, X0 + 3840.0, Y0 + 3820.0)  # bottom/top = 40 (mod 60)
    item = make_item(tmp_path / "src", item_id="S2", collection=S2, bounds=bounds)
    cube = assemble_tile(tile, [item], spec())
    assert [cube.encoded[(S2, g)].attrs["lattice_shift_m"] for g in ("10m", "20m", "60m")] == [
        [0.0, 0.0],
        [0.0, 0.0],
        [0.0, -20.0],
    ]
    ds = cube.encoded[(S2, "60m")].load()
    cs = load_registry().collection(S2, "sample")
    bands = tuple(str(b) for b in ds["band"].values)
    dn = np.stack([_read(item["assets"][cs.assets[b]]["href"])[32:64, 0:32] for b in bands])[None]
    conv = cs.conversion(item["properties"])
    want = encode_block(dn, np.full((1, 1, 32, 32), 4), conversion=conv, mask=cs.mask, encoding="int16")
    np.testing.assert_array_equal(ds["reflectance"].values, want)  # the scene is clear (SCL 4)


def test_a_store_of_the_tile_origin_layout_is_refused_for_writes_in_one_line(tmp_path: Path) -> None:
    """A layout-1 store (lattices through the tile origin, no lattice_shift_m) is still read, with
    shift (0, 0), but no run writes into it: one line says why and what to do."""
    import zarr

    out = tmp_path / "cubes"
    s = spec(LANDSAT)
    item = _landsat(tmp_path / "src", 32631, X0, Y0 + 1920.0, 64)  # on the tile lattice
    assert write_cubes([item], [TILE_IDS[0]], s, str(out), progress=False).tiles_done == [TILE_IDS[0]]
    group = zarr.open_group(str(out), mode="r+", zarr_format=3)  # as layout 1 wrote it
    aom_cubes = group.attrs.asdict()["aom_cubes"]
    assert isinstance(aom_cubes, dict)
    root_meta: dict[str, Any] = dict(aom_cubes)
    group.attrs["aom_cubes"] = {**root_meta, "layout_version": 1}
    g30 = zarr.open_group(str(out / TILE_IDS[0] / LANDSAT / "30m"), mode="r+", zarr_format=3)
    for key in ("lattice_shift_m", "lattice"):
        del g30.attrs[key]
    with pytest.raises(CubeStoreError) as err:
        write_cubes([item], TILE_IDS[:2], s, str(out), progress=False)
    msg = str(err.value)
    assert (
        "\n" not in msg and "cube layout 1 (every GSD group's pixel lattice through the tile origin)" in msg
    )
    assert "write to a new --out" in msg
    store = CubeStore.open(str(out))
    assert store.recorded_tiles() == [TILE_IDS[0]]  # nothing was written
    ds = store.open_group(TILE_IDS[0], LANDSAT, "30m", lazy=True)
    assert lattice_shift(ds.attrs) == (0.0, 0.0)
    meta = store.group_meta(TILE_IDS[0], LANDSAT, "30m", ds)
    assert (meta.x0, meta.y0) == (X0, Y0 + 1920.0)
    assert np.isfinite(store.read_window(ds, 0, 0, 0, 8, 8)).all()

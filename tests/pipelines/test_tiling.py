"""The UTM tile grid: stable ids, exact pixel grids, gap-free coverage across zones, the equator and
the antimeridian."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from pyproj import Transformer
from shapely.geometry import box, shape

from pipelines.tiling import Tile, TileError, TileGrid, utm_zone

GRID = TileGrid()


def _covered(tiles: list[Tile], lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    union = shapely.union_all([shape(t.footprint_wgs84()) for t in tiles])
    return shapely.contains_xy(union.buffer(1e-9), lon, lat)


def test_tile_id_round_trip_and_origin() -> None:
    tile = GRID.tile_at(6.0, 45.0)
    x, y = Transformer.from_crs(4326, 32632, always_xy=True).transform(6.0, 45.0)
    ix, iy = math.floor(x / 7680), math.floor(y / 7680)
    assert tile.tile_id == f"32632_{ix}_{iy}"
    assert tile.epsg == 32632
    assert tile.bounds == (ix * 7680.0, iy * 7680.0, (ix + 1) * 7680.0, (iy + 1) * 7680.0)
    assert GRID.tile(tile.tile_id) == tile
    assert tile.index == (ix, iy)
    # stable: the same AOI gives the same ids every time
    a = [t.tile_id for t in GRID.tiles_for_bbox((5.5, 44.8, 6.5, 45.2))]
    b = [t.tile_id for t in GRID.tiles_for_bbox((5.5, 44.8, 6.5, 45.2))]
    assert a == b and len(a) == len(set(a))


@pytest.mark.parametrize("bad", ["32632_1", "abc_1_2", "32632_01_2", "4326_1_2", "32661_1_1", "32632_1_-5"])
def test_bad_tile_ids_are_rejected(bad: str) -> None:
    with pytest.raises(TileError):
        GRID.tile(bad)


def test_grid_size_must_tile_native_gsds() -> None:
    with pytest.raises(TileError):
        TileGrid(7000.0)
    assert TileGrid(1920.0).tile_size_m == 1920.0


@pytest.mark.parametrize(("res", "px"), [(10, 768), (20, 384), (30, 256), (60, 128)])
def test_geobox_is_aligned_to_the_tile(res: float, px: int) -> None:
    tile = GRID.tile_at(6.0, 45.0)
    gbox = tile.geobox(res)
    assert gbox.shape == (px, px)
    assert str(gbox.crs) == "EPSG:32632"
    left, bottom, right, top = tile.bounds
    bb = gbox.boundingbox
    assert (bb.left, bb.bottom, bb.right, bb.top) == (left, bottom, right, top)
    assert gbox.resolution.x == res and gbox.resolution.y == -res


def test_geobox_for_a_gsd_that_does_not_divide_the_tile() -> None:
    tile = GRID.tile_at(6.0, 45.0)
    gbox = tile.geobox(463.3)
    assert gbox.shape == (17, 17)  # ceil(7680 / 463.3)
    assert gbox.transform.c == tile.bounds[0]  # lattice anchored at the tile origin
    assert math.isclose(gbox.transform.f - 17 * 463.3, tile.bounds[1])


def test_geobox_shifted_onto_a_native_grid_keeps_its_shape() -> None:
    tile = GRID.tile_at(6.0, 45.0)
    left, bottom, right, top = tile.bounds
    gbox = tile.geobox(30.0, (-15.0, -15.0))  # Landsat Collection 2: pixel edges at 15 m (mod 30)
    assert gbox.shape == tile.geobox(30.0).shape == (256, 256)
    bb = gbox.boundingbox
    assert (bb.left, bb.bottom, bb.right, bb.top) == (left - 15, bottom - 15, right - 15, top - 15)
    assert gbox.transform.c % 30 == 15 and gbox.transform.f % 30 == 15
    with pytest.raises(TileError, match="less than one 30 m pixel"):
        tile.geobox(30.0, (30.0, 0.0))


def test_cover_across_a_utm_zone_boundary_has_no_gaps() -> None:
    bbox = (5.8, 44.9, 6.2, 45.1)
    tiles = GRID.tiles_for_bbox(bbox)
    assert {t.epsg for t in tiles} == {32631, 32632}
    for t in tiles:  # every tile intersects its own zone strip and parses back
        assert GRID.tile(t.tile_id) == t
    rng = np.random.default_rng(0)
    lon = rng.uniform(bbox[0], bbox[2], 4000)
    lat = rng.uniform(bbox[1], bbox[3], 4000)
    # and a dense line of points just either side of the 6E meridian
    lon = np.concatenate([lon, np.full(400, 6.0 - 1e-7), np.full(400, 6.0 + 1e-7)])
    lat = np.concatenate([lat, np.linspace(44.9, 45.1, 400), np.linspace(44.9, 45.1, 400)])
    assert _covered(tiles, lon, lat).all()


def test_tile_at_uses_the_points_zone() -> None:
    assert GRID.tile_at(5.999, 45).epsg == 32631
    assert GRID.tile_at(6.001, 45).epsg == 32632
    assert GRID.tile_at(6.001, -45).epsg == 32732
    assert utm_zone(180.0) == 60 and utm_zone(-180.0) == 1


def test_cover_across_the_equator() -> None:
    tiles = GRID.tiles_for_bbox((2.9, -0.05, 3.1, 0.05))
    assert {t.epsg for t in tiles} == {32631, 32731}
    lon = np.linspace(2.9, 3.1, 50).repeat(50)
    lat = np.tile(np.linspace(-0.05, 0.05, 50), 50)
    assert _covered(tiles, lon, lat).all()


def test_cover_across_the_antimeridian() -> None:
    tiles = GRID.tiles_for_bbox((179.9, -16.6, -179.9, -16.5))
    assert {t.epsg for t in tiles} == {32701, 32760}
    crossing = [t for t in tiles if t.footprint_wgs84()["type"] == "MultiPolygon"]
    assert crossing, "tiles straddling 180 degrees must be split there (RFC 7946)"
    for t in tiles:
        w, s, e, n = shape(t.footprint_wgs84()).bounds
        assert w >= -180.0 and e <= 180.0 and s > -17 and n < -16
    lon = np.concatenate([np.linspace(179.9, 179.9999, 40), np.linspace(-179.9999, -179.9, 40)]).repeat(10)
    lat = np.tile(np.linspace(-16.6, -16.5, 10), 80)
    assert _covered(tiles, lon, lat).all()


def test_geometry_across_the_antimeridian_with_raw_longitudes() -> None:
    ring = [[179.95, -16.6], [-179.95, -16.6], [-179.95, -16.5], [179.95, -16.5], [179.95, -16.6]]
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {}}
    tiles = GRID.tiles_for_geometry({"type": "FeatureCollection", "features": [feature]})
    assert {t.epsg for t in tiles} == {32701, 32760}
    assert len(tiles) < 20  # not a band around the whole globe
    assert tiles == GRID.tiles_for_bbox((179.95, -16.6, -179.95, -16.5))


def test_tiles_for_items_uses_footprints() -> None:
    items = [
        {"id": "a", "geometry": box(5.95, 44.95, 6.05, 45.0).__geo_interface__},
        {"id": "b", "bbox": [6.3, 45.1, 6.35, 45.15]},
        {"id": "c"},  # no footprint: ignored
    ]
    tiles = GRID.tiles_for_items(items)
    ids = {t.tile_id for t in tiles}
    assert {t.tile_id for t in GRID.tiles_for_bbox((5.95, 44.95, 6.05, 45.0))} <= ids
    assert GRID.tile_at(6.32, 45.12).tile_id in ids


def test_polar_areas_are_outside_the_grid() -> None:
    assert GRID.tiles_for_bbox((0.0, 85.0, 1.0, 86.0)) == []
    with pytest.raises(TileError):
        GRID.tile_at(0.0, 89.0)
    with pytest.raises(TileError):
        GRID.tiles_for_bbox((0.0, 46.0, 1.0, 45.0))


@pytest.mark.slow
def test_continent_scale_cover() -> None:
    # Australia's bbox: a few hundred thousand tiles, in several zones, in seconds
    tiles = TileGrid(7680.0).tiles_for_bbox((113.0, -44.0, 154.0, -10.0))
    assert 200_000 < len(tiles) < 400_000
    assert {t.epsg for t in tiles} == {32700 + z for z in range(49, 57)}
    assert len({t.tile_id for t in tiles}) == len(tiles)


def test_native_pixel_grids_of_real_items_against_the_tile_lattice() -> None:
    """The native offsets docs/cubes.md states ("Resampling"), measured on the recorded real items in
    their own CRSs; the group lattices planned from them: tests/pipelines/cubes/test_lattice.py."""
    import json
    from collections import defaultdict

    from tests.conftest import REPO_ROOT

    root = REPO_ROOT.parent / "shared" / "data" / "stac-items"
    if not (root / "index.json").exists():
        pytest.skip(f"recorded STAC items not found at {root} (../shared/data/stac-items)")
    offsets: dict[tuple[str, float], set[tuple[float, float]]] = defaultdict(set)
    for entry in json.loads((root / "index.json").read_text())["items"]:
        sensor = (
            "landsat"
            if "landsat" in entry["collection"]
            else "s2"
            if "sentinel-2-l2a" in entry["collection"] or "c1-l2a" in entry["collection"]
            else None
        )
        if sensor is None:
            continue
        item = json.loads((root / entry["file"]).read_text())
        for asset in (item.get("assets") or {}).values():
            t = asset.get("proj:transform") or item["properties"].get("proj:transform")
            if t and abs(t[0]) in (10, 20, 30, 60):
                g = abs(float(t[0]))
                offsets[(sensor, g)].add((float(t[2]) % g, float(t[5]) % g))
    assert offsets[("landsat", 30.0)] == {(15.0, 15.0)}
    assert offsets[("s2", 10.0)] == offsets[("s2", 20.0)] == {(0.0, 0.0)}
    assert offsets[("s2", 60.0)] == {(0.0, 0.0), (0.0, 40.0)}  # MGRS origins at ...040 m northing
    lattice = TileGrid(7680.0).tile_at(5.9, 45.2).geobox(60.0).transform
    assert (lattice.c % 60.0, lattice.f % 60.0) == (
        0.0,
        0.0,
    )  # the tile lattice passes through multiples of the GSD


_SQUARE = {"type": "Polygon", "coordinates": [[[6, 45], [6.1, 45], [6.1, 45.1], [6, 45.1], [6, 45]]]}


@pytest.mark.parametrize(
    ("doc", "expect"),
    [
        ([1, 2], "not GeoJSON: is 'list'"),
        ("just a string", "not GeoJSON: is 'str'"),
        (42, "not GeoJSON: is 'int'"),
        ({"type": "Feature", "properties": {}}, "a Feature needs a 'geometry' member"),
        ({"type": "FeatureCollection", "features": [1]}, r"features\[0\] is not a Feature"),
        ({"type": "FeatureCollection", "features": 5}, "needs a 'features' list"),
        ({"foo": 1}, "'type' is None; valid: Point, .*FeatureCollection"),
        ({"type": "Polygon", "coordinates": "x"}, "not a valid Polygon"),
        (
            {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": [1]}]},
            r"features\[0\] geometry is 'list'",
        ),
    ],
)
def test_geojson_of_the_wrong_shape_is_an_input_error(doc: object, expect: str) -> None:
    from pipelines.tiling import geojson_geometry, geometry_from_geojson

    with pytest.raises(TileError, match=expect):
        geometry_from_geojson(doc)
    with pytest.raises(TileError, match=expect):
        geojson_geometry(doc)


def test_geojson_geometry_is_the_given_geometry_or_a_collection() -> None:
    from pipelines.tiling import geojson_geometry, geometry_from_geojson

    feature = {"type": "Feature", "geometry": _SQUARE, "properties": {}}
    null: dict[str, object] = {"type": "Feature", "geometry": None, "properties": {}}
    assert geojson_geometry(_SQUARE) == _SQUARE
    assert geojson_geometry({"type": "FeatureCollection", "features": [feature, null]}) == _SQUARE
    two = geojson_geometry({"type": "FeatureCollection", "features": [feature, feature]})
    assert two == {"type": "GeometryCollection", "geometries": [_SQUARE, _SQUARE]}
    with pytest.raises(TileError, match="has no geometry"):
        geojson_geometry({"type": "FeatureCollection", "features": [null]})
    assert geometry_from_geojson({"type": "FeatureCollection", "features": [null]}).is_empty

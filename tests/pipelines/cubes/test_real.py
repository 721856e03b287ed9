"""Cubes from real products (../shared/data/real): Sentinel-2 L2A 29RKH and Landsat 8 C2 L2
LC08_L2SP_001062, checked against an odc-stac-free oracle (plain rasterio reads + registry formulas)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.cubes import CubeSpec, assemble_tile, lattice_shift
from pipelines.tiling import TileGrid
from tests.pipelines.cubes.support import LANDSAT, S2, assert_matches_oracle, oracle

GRID = TileGrid()
S2_DIR = "sentinel-2-l2a-cogs/S2A_29RKH_20200219_0_L2A"
L8_ID = "LC08_L2SP_001062_20201031_20201106_02_T2"


def s2_29rkh_item(real: Path) -> dict[str, Any]:
    """The real Earth Search item with its hrefs pointed at the local (decimated) COGs."""
    folder = real / S2_DIR
    item = json.loads((folder / "S2A_29RKH_20200219_0_L2A.json").read_text())
    for asset in item["assets"].values():
        local = folder / Path(str(asset["href"])).name
        asset["href"] = str(local)
    item["collection"] = S2
    return item


def l8_item(real: Path) -> dict[str, Any]:
    """A STAC item (registry asset keys, no projection metadata) for the USGS Landsat 8 scene."""
    folder = real / "landsat-c2-l2" / L8_ID
    usgs = json.loads((folder / f"{L8_ID}_SR_stac.json").read_text())
    mtl = json.loads((folder / f"{L8_ID}_MTL.json").read_text())["LANDSAT_METADATA_FILE"]["IMAGE_ATTRIBUTES"]
    when = f"{mtl['DATE_ACQUIRED']}T{mtl['SCENE_CENTER_TIME'][:8]}Z"
    files = {
        "coastal": "SR_B1",
        "blue": "SR_B2",
        "green": "SR_B3",
        "red": "SR_B4",
        "nir08": "SR_B5",
        "swir16": "SR_B6",
        "swir22": "SR_B7",
        "qa_pixel": "QA_PIXEL",
    }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": L8_ID,
        "collection": LANDSAT,
        "geometry": usgs["geometry"],
        "bbox": usgs["bbox"],
        "properties": {"datetime": when, "platform": "landsat-8"},
        "assets": {k: {"href": str(folder / f"{L8_ID}_{v}.TIF")} for k, v in files.items()},
        "links": [],
    }


def _cloudiest_tile(real: Path):
    """A 7680 m tile inside 29RKH with both clear and SCL-flagged pixels."""
    import rasterio

    from pipelines.registry import load_registry

    rule = load_registry().collection(S2, "sample").mask
    with rasterio.open(real / S2_DIR / "SCL.tif") as src:
        scl = src.read(1)
        t = src.transform
    best = None
    for ix in range(math.ceil(199980 / 7680), math.floor(309780 / 7680)):
        for iy in range(math.ceil(2690220 / 7680), math.floor(2800020 / 7680)):
            c0 = int((ix * 7680 - t.c) / t.a)
            r0 = int((t.f - (iy + 1) * 7680) / -t.e)
            win = scl[r0 : r0 + 38, c0 : c0 + 38]
            frac = float(rule.invalid(win).mean())
            if frac < 0.7 and (best is None or frac > best[0]):
                best = (frac, f"32629_{ix}_{iy}")
    assert best is not None and best[0] > 0.02, "29RKH should have a partly cloudy tile"
    return GRID.tile(best[1])


def _check_against_oracle(
    item: dict[str, Any], collection: str, tile, ds, gsd: float, *, every: int = 1
) -> None:
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    rows, cols = (
        a.ravel() for a in np.meshgrid(np.arange(0, ny, every), np.arange(0, nx, every), indexing="ij")
    )
    for b, band in enumerate(str(v) for v in ds["band"].values):
        exp, amb = oracle(item, collection, band, tile, gsd, rows, cols, shift_m=lattice_shift(ds.attrs))
        got = ds["reflectance"].isel(time=0, band=b).values[rows, cols]
        assert_matches_oracle(got, exp, amb)


def test_real_sentinel2_29rkh(real_data: Path) -> None:
    item = s2_29rkh_item(real_data)
    tile = _cloudiest_tile(real_data)
    cube = assemble_tile(tile, [item], CubeSpec(grid=GRID, collections=(S2,)))
    assert cube.skipped == []
    assert list(cube) == [(S2, "10m"), (S2, "20m"), (S2, "60m")]
    for (_, label), ds in ((k, cube[k].load()) for k in cube):
        refl = ds["reflectance"].values
        finite = refl[np.isfinite(refl)]
        assert finite.size > 0 and np.isnan(refl).any()  # clear and flagged pixels both present
        assert finite.min() >= -0.2 and finite.max() <= 1.6
        assert list(ds["source_items"].values) == ["S2A_29RKH_20200219_0_L2A"]
        gsd = float(label[:-1])
        # NaN exactly where SCL flags cloud/shadow/no data, values = DN * 1e-4 elsewhere
        _check_against_oracle(item, S2, tile, ds, gsd, every=3 if gsd == 10 else 1)


def test_real_landsat8_001062(real_data: Path, tmp_path: Path) -> None:
    item = l8_item(real_data)
    tile = GRID.tile("32720_33_1260")  # south-hemisphere zone 20; the scene files use 32620 with y < 0
    spec = CubeSpec(grid=GRID, collections=(LANDSAT,), missing_proj="read_header")
    cube = assemble_tile(tile, [item], spec)
    assert cube.skipped == []
    ds = cube[(LANDSAT, "30m")].load()
    assert ds.sizes == {"time": 1, "band": 7, "y": 256, "x": 256}
    assert str(ds["time"].values[0]).startswith("2020-10-31T14:31:47")
    _check_against_oracle(item, LANDSAT, tile, ds, 30.0, every=2)
    # the scene is 99.9 % cloud: QA_PIXEL flags (almost) everything
    assert np.isnan(ds["reflectance"].values).mean() > 0.95

    # with a registry override that masks fill only, the reflectance values themselves are checked
    override = tmp_path / "fill_only.yaml"
    override.write_text(
        "collections:\n"
        "  - {catalog: sample, collection: landsat-c2-l2, sensor: landsat-oli, dtype: uint16, nodata: 0,\n"
        "     scale: 0.0000275, offset: -0.2,\n"
        "     assets: {B1: coastal, B2: blue, B3: green, B4: red, B5: nir08, B6: swir16, B7: swir22},\n"
        "     mask: {asset: qa_pixel, kind: bits, invalid_bits: [0], fill_value: 1}}\n"
    )
    spec2 = CubeSpec(
        grid=GRID, collections=(LANDSAT,), missing_proj="read_header", registry_files=(str(override),)
    )
    ds2 = assemble_tile(tile, [item], spec2)[(LANDSAT, "30m")].load()
    refl = ds2["reflectance"].values
    finite = refl[np.isfinite(refl)]
    assert finite.size > 0.9 * refl.size
    assert finite.min() >= -0.2 and finite.max() <= 1.6
    rows, cols = (a.ravel() for a in np.meshgrid(np.arange(0, 256, 2), np.arange(0, 256, 2), indexing="ij"))
    cs = spec2.collection_spec(LANDSAT)
    assert cs.mask.invalid_bits == (0,)
    for b, band in enumerate(str(v) for v in ds2["band"].values):
        exp, amb = oracle(
            item, LANDSAT, band, tile, 30.0, rows, cols, cs=cs, shift_m=lattice_shift(ds2.attrs)
        )
        assert_matches_oracle(refl[0, b][rows, cols], exp, amb)


@pytest.mark.parametrize("proj_key", ["proj:epsg", "proj:code"])
def test_real_item_projection_keys(real_data: Path, proj_key: str) -> None:
    item = s2_29rkh_item(real_data)
    epsg = item["properties"].pop("proj:epsg")
    item["properties"][proj_key] = epsg if proj_key == "proj:epsg" else f"EPSG:{epsg}"
    tile = GRID.tile("32629_30_360")
    cube = assemble_tile(tile, [item], CubeSpec(grid=GRID, collections=(S2,)))
    assert cube.skipped == [] and len(cube) == 3

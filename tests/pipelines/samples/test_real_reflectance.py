"""Reflectance from the real sample products is right, via their STAC items and the sensor registry.

For items built from the real products, applying ``registry.collection(item.collection_id, 'sample')
.scale_offset(item.properties)`` to DNs read with rasterio from the item's red asset gives:
29RKH (baseline 02.14): DN x 1e-4; T29UNU (baseline 04.00): (DN - 1000) x 1e-4; Landsat C2 L2 SR:
DN x 2.75e-5 - 0.2. Skipped when the real-data folder (``../shared/data/real`` or ``$AOM_REAL_DATA``)
is absent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pystac
import pytest
import rasterio
from pyproj import CRS
from rasterio.windows import Window

from pipelines.registry import load_registry
from pipelines.samples import (
    CORE_EXTENSIONS,
    DEFAULT_REAL_RELATIVE,
    REAL_DATA_ENV,
    SyntheticSpec,
    build_real_items,
    build_sample_catalog,
    default_real_data_dir,
)

REAL_DIR = default_real_data_dir()
pytestmark = pytest.mark.skipif(
    REAL_DIR is None or not REAL_DIR.is_dir(),
    reason=(
        f"real-data folder {REAL_DIR or DEFAULT_REAL_RELATIVE} not found (set {REAL_DATA_ENV}): "
        "real-product reflectance tests skipped"
    ),
)

S2_COG = "S2A_29RKH_20200219_0_L2A"
S2_SAFE = "S2A_29UNU_20221005_0_L2A"
LANDSAT = "LC08_L2SP_001062_20201031_20201106_02_T2"
LANDSAT_POLAR = "LC08_L2SR_099120_20191129_20201016_02_T2"
MODIS = "MCD43A4.A2017006.h21v11.006.2017018074804"


@pytest.fixture(scope="module")
def real() -> Path:
    assert REAL_DIR is not None
    return REAL_DIR


@pytest.fixture(scope="module")
def items(real: Path) -> dict[str, pystac.Item]:
    built, notes = build_real_items(real)
    assert notes == []
    return {it.id: it for it in built}


def _local(href: str) -> Path:
    return Path(url2pathname(urlparse(href).path))


def _window(ds: rasterio.io.DatasetReader) -> Window:
    """A 256 px window west of centre: valid data in every product here, and quick to decode."""
    w, h = min(256, ds.width), min(256, ds.height)
    return Window(col_off=ds.width // 8, row_off=max(0, ds.height // 2 - h // 2), width=w, height=h)


def _read_asset(item: pystac.Item, key: str) -> np.ndarray:
    with rasterio.open(item.assets[key].href) as ds:  # file:// href, as any reader gets it
        return np.asarray(ds.read(1))


def _read_file(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return np.asarray(ds.read(1, window=_window(ds)))


def _scale_offset(item: pystac.Item) -> tuple[float, float]:
    cs = load_registry().collection(item.collection_id or "", "sample")
    return cs.scale_offset(item.properties)


def _check_pixels(
    item: pystac.Item, raw: np.ndarray, formula: Callable[[float], float], nodata: float
) -> None:
    """A few valid pixels: registry scale/offset on the item's DNs == the formula on independent DNs."""
    with rasterio.open(item.assets["red"].href) as ds:
        dn = np.asarray(ds.read(1, window=_window(ds)))
    assert np.array_equal(dn, raw)
    scale, offset = _scale_offset(item)
    valid = np.argwhere(raw != nodata)
    assert len(valid) > 100
    picks = valid[np.linspace(0, len(valid) - 1, 7).astype(int)]
    for r, c in picks:
        got = float(dn[r, c]) * scale + offset
        assert got == pytest.approx(formula(float(raw[r, c])), abs=1e-9)
    cs = load_registry().collection(item.collection_id or "", "sample")
    refl = cs.to_reflectance(dn, item.properties)
    r, c = picks[3]
    assert float(refl[r, c]) == pytest.approx(formula(float(raw[r, c])), abs=1e-6)
    rb = item.assets["red"].extra_fields["raster:bands"][0]
    assert rb["scale"] == pytest.approx(scale) and rb["offset"] == pytest.approx(offset)


def test_every_real_item_has_the_core_extensions(items: dict[str, pystac.Item]) -> None:
    assert {S2_COG, S2_SAFE, LANDSAT, LANDSAT_POLAR, MODIS} <= set(items)
    for item in items.values():
        for ext in CORE_EXTENSIONS:
            assert ext in item.stac_extensions, (item.id, ext)
        assert "proj:epsg" not in item.properties
        assert ("proj:code" in item.properties) != ("proj:wkt2" in item.properties)
        assert item.properties["aom:synthetic"] is False
        for key, asset in item.assets.items():
            assert asset.href.startswith("file:///") and _local(asset.href).is_file(), (item.id, key)
            if "proj:shape" in asset.extra_fields:
                with rasterio.open(asset.href) as ds:
                    assert list(asset.extra_fields["proj:shape"]) == [ds.height, ds.width]
                    assert ds.transform.almost_equals(
                        rasterio.Affine(*asset.extra_fields["proj:transform"][:6])
                    )


# the band common names the eo extension v1.1.0 allows (its schema's enum, tag v1.1.0)
EO_1_1_COMMON_NAMES = {
    *("coastal", "blue", "green", "red", "rededge", "yellow", "pan", "nir", "nir08", "nir09"),
    *("cirrus", "swir16", "swir22", "lwir", "lwir11", "lwir12"),
}


def test_eo_band_common_names_are_ones_the_declared_eo_version_allows(items: dict[str, pystac.Item]) -> None:
    """The MODIS item's B05 (1.24 um) said ``common_name: nir12``, a name the eo extension v1.1.0 the
    items declare does not have (its schema's enum): the item failed the eo schema. A band STAC has no
    name for now has none, and keeps its wavelengths."""
    modis_b05 = [b for a in items[MODIS].assets.values() for b in a.extra_fields.get("eo:bands", [])]
    assert any(b.get("center_wavelength") == 1.24 and "common_name" not in b for b in modis_b05)
    for item in items.values():
        assert "https://stac-extensions.github.io/eo/v1.1.0/schema.json" in item.stac_extensions
        for key, asset in item.assets.items():
            for band in asset.extra_fields.get("eo:bands", []):
                assert band.get("common_name", "red") in EO_1_1_COMMON_NAMES, (item.id, key, band)


def test_s2_29rkh_red_is_dn_times_1e4(items: dict[str, pystac.Item], real: Path) -> None:
    item = items[S2_COG]
    assert item.collection_id == "sentinel-2-l2a"
    assert item.properties["s2:processing_baseline"] == "02.14"
    assert _scale_offset(item) == pytest.approx((1e-4, 0.0))
    raw = _read_file(real / "sentinel-2-l2a-cogs" / S2_COG / "B04.tif")
    _check_pixels(item, raw, lambda dn: dn * 1e-4, 0)
    red = item.assets["red"].extra_fields
    assert red["proj:shape"] == [1098, 1098] and red["proj:transform"][0] == 100.0  # decimated 10x
    assert red["gsd"] == 100 and red["raster:bands"][0]["spatial_resolution"] == 100
    assert item.assets["scl"].extra_fields["proj:transform"][0] == 200.0
    assert item.properties["proj:code"] == "EPSG:32629"


def test_s2_t29unu_red_is_dn_minus_1000_times_1e4(items: dict[str, pystac.Item], real: Path) -> None:
    item = items[S2_SAFE]
    assert item.collection_id == "sentinel-2-l2a"
    assert item.properties["s2:processing_baseline"] == "04.00"
    assert "earthsearch:boa_offset_applied" not in item.properties
    assert item.properties["s2:boa_add_offset"]["B04"] == -1000
    assert _scale_offset(item) == pytest.approx((1e-4, -0.1))
    (path,) = (real / "sentinel-2-l2a-safe").glob("*T29UNU*.SAFE/GRANULE/*/IMG_DATA/R60m/*_B04_60m.jp2")
    raw = _read_file(path)
    _check_pixels(item, raw, lambda dn: (dn - 1000) * 1e-4, 0)
    assert item.assets["red"].extra_fields["raster:bands"][0]["offset"] == pytest.approx(-0.1)
    assert item.assets["scl"].extra_fields["proj:shape"] == [1830, 1830]
    assert item.properties["eo:cloud_cover"] == pytest.approx(59.769726)
    assert item.datetime is not None and str(item.datetime.date()) == "2022-10-05"


def test_landsat_sr_red_is_dn_times_2_75e5_minus_0_2(items: dict[str, pystac.Item], real: Path) -> None:
    item = items[LANDSAT]
    assert item.collection_id == "landsat-c2-l2"
    assert _scale_offset(item) == pytest.approx((2.75e-5, -0.2))
    raw = _read_file(real / "landsat-c2-l2" / LANDSAT / f"{LANDSAT}_SR_B4.TIF")
    _check_pixels(item, raw, lambda dn: dn * 2.75e-5 - 0.2, 0)
    assert {"qa_pixel", "lwir11", "mtl.json"} <= set(item.assets)
    assert item.properties["proj:code"] == "EPSG:32620"
    assert item.properties["landsat:wrs_path"] == "001" and item.properties["landsat:wrs_row"] == "062"


def test_landsat_scenes_from_mtl_keep_their_crs(items: dict[str, pystac.Item]) -> None:
    polar = items[LANDSAT_POLAR]
    assert polar.properties["proj:code"] == "EPSG:3031"
    lon0, lat0, lon1, lat1 = polar.bbox or []
    assert -90 < lat0 < lat1 < -60 and -180 <= lon0 < lon1 <= 180
    codes = {it.properties.get("proj:code") for it in items.values() if it.collection_id == "landsat-c2-l2"}
    assert codes == {"EPSG:32620", "EPSG:32624", "EPSG:3031", "EPSG:32618", "EPSG:32617"}
    for it in items.values():
        if it.collection_id == "landsat-c2-l2":
            assert _scale_offset(it) == pytest.approx((2.75e-5, -0.2))


def test_modis_is_sinusoidal_with_per_band_qa(items: dict[str, pystac.Item]) -> None:
    item = items[MODIS]
    assert item.collection_id == "modis-mcd43a4"
    assert "proj:code" not in item.properties
    cs = load_registry().collection("modis-mcd43a4", "sample")
    with rasterio.open(item.assets["Nadir_Reflectance_Band1"].href) as ds:
        assert CRS.from_wkt(item.properties["proj:wkt2"]).equals(CRS.from_user_input(ds.crs))
    for band in cs.band_names:
        assert cs.assets[band] in item.assets
        assert cs.mask.per_band_assets[band] in item.assets
    assert _scale_offset(item) == pytest.approx((1e-4, 0.0))
    dn = _read_asset(item, "Nadir_Reflectance_Band1")
    refl = cs.to_reflectance(dn, item.properties)
    assert np.isnan(refl[dn == 32767]).all()
    assert 0.0 <= float(np.nanmedian(refl)) < 0.6
    assert item.datetime is not None and str(item.datetime.date()) == "2017-01-06"


def test_sample_catalog_includes_the_real_items(tmp_path: Path, real: Path) -> None:
    spec = SyntheticSpec(scene_size_m=960.0, n_dates=1, collections=("sentinel-2-l2a",))
    built = build_sample_catalog(tmp_path, real_dir=real, synthetic=spec)
    assert built.notes == ()
    assert {S2_COG, S2_SAFE, LANDSAT, MODIS} <= set(built.item_ids)
    assert built.collections == ("landsat-c2-l2", "modis-mcd43a4", "sentinel-2-l2a")
    cat = pystac.Catalog.from_file(str(built.catalog_json))
    s2 = next(it for it in cat.get_items(recursive=True) if it.id == S2_COG)
    assert s2.assets["red"].href.startswith("file:///")  # real data is referenced, never copied
    assert not any(p.suffix == ".jp2" for p in tmp_path.rglob("*"))

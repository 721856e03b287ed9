"""The sample catalog and the seeded synthetic generator (no network, no real data needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine

from pipelines.registry import load_registry
from pipelines.samples import (
    CORE_EXTENSIONS,
    LANDCOVER_CLASSES,
    LANDCOVER_SPECTRA,
    REAL_DATA_ENV,
    SampleCatalog,
    SyntheticSpec,
    apply_transform,
    band_reflectance,
    build_sample_catalog,
    default_real_data_dir,
    generate_landcover,
)

SPEC = SyntheticSpec(seed=7, scene_size_m=1920.0, n_dates=2, cloud_fraction=0.25)
WATER = LANDCOVER_CLASSES.index("water")
VEGETATION = LANDCOVER_CLASSES.index("vegetation")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> SampleCatalog:
    out = tmp_path_factory.mktemp("samples")
    return build_sample_catalog(out / "catalog", real_dir=out / "no-such-real-data", synthetic=SPEC)


@pytest.fixture(scope="module")
def items(built: SampleCatalog) -> dict[str, pystac.Item]:
    cat = pystac.Catalog.from_file(str(built.catalog_json))
    return {it.id: it for it in cat.get_items(recursive=True)}


def _path(item: pystac.Item, key: str) -> Path:
    href = item.assets[key].get_absolute_href()
    assert href is not None
    return Path(url2pathname(urlparse(href).path)) if href.startswith("file://") else Path(href)


def _read(item: pystac.Item, key: str) -> np.ndarray:
    with rasterio.open(_path(item, key)) as ds:
        return np.asarray(ds.read(1))


def _reflectance(item: pystac.Item, key: str) -> np.ndarray:
    cs = load_registry().collection(item.collection_id or "", "sample")
    return cs.to_reflectance(_read(item, key), item.properties)


def _grid(item: pystac.Item, key: str) -> tuple[Affine, tuple[int, int]]:
    a = item.assets[key].extra_fields
    return Affine(*a["proj:transform"][:6]), (a["proj:shape"][0], a["proj:shape"][1])


def _truth(item: pystac.Item, key: str) -> np.ndarray:
    t, shape = _grid(item, key)
    bounds = (t.c, t.f + t.e * shape[0], t.c + t.a * shape[1], t.f)
    return generate_landcover(SPEC, bounds, item.properties["proj:code"], t.a)


def _by(items: dict[str, pystac.Item], collection: str) -> list[pystac.Item]:
    return sorted((it for it in items.values() if it.collection_id == collection), key=lambda it: it.id)


def test_missing_real_folder_is_noted_and_synthetic_built(built: SampleCatalog) -> None:
    assert any("no-such-real-data" in n and "synthetic items only" in n for n in built.notes)
    assert built.item_ids and all(i.startswith("SYN_") for i in built.item_ids)
    assert built.collections == ("hls2-l30", "hls2-s30", "landsat-c2-l2", "sentinel-2-l2a")
    # 2 zones x 2 dates x 4 collections
    assert len(built.item_ids) == 16


def test_catalog_round_trips_through_pystac(built: SampleCatalog, items: dict[str, pystac.Item]) -> None:
    assert sorted(items) == sorted(built.item_ids)
    cat = pystac.Catalog.from_file(str(built.catalog_json))
    assert cat.catalog_type == pystac.CatalogType.SELF_CONTAINED
    assert sorted(c.id for c in cat.get_children()) == list(built.collections)
    for item in items.values():
        d = item.to_dict(include_self_link=False)
        again = pystac.Item.from_dict(d).to_dict(include_self_link=False)
        assert again == d
        for ext in CORE_EXTENSIONS:
            assert ext in item.stac_extensions
        p = item.properties
        assert p["proj:code"] in ("EPSG:32631", "EPSG:32632")
        assert p["created"] == p["updated"] == SPEC.fixed_timestamp
        assert 0.0 <= p["eo:cloud_cover"] <= 100.0
        assert p["platform"] and item.datetime is not None
        lon0, lat0, lon1, lat1 = item.bbox or []
        assert 5.9 < lon0 < lon1 < 6.1 and 44.9 < lat0 < lat1 < 45.1
        for key, asset in item.assets.items():
            assert asset.roles
            if "eo:bands" in asset.extra_fields:
                eo = asset.extra_fields["eo:bands"][0]
                assert 0.4 < eo["center_wavelength"] < 2.5  # micrometres
                assert eo["full_width_half_max"] < 0.2
                assert asset.extra_fields["raster:bands"][0]["scale"] > 0
            assert not asset.href.startswith("/"), (
                f"{item.id}/{key}: synthetic hrefs are relative in the catalog"
            )
            assert _path(item, key).is_file()


def test_ndjson_items_are_valid_stac(built: SampleCatalog) -> None:
    """Each line validates against the STAC item schema of its version (offline copies)."""
    from pipelines.testing.schemas import SchemaSet

    schemas = SchemaSet.find()
    if schemas is None:
        pytest.skip("the shared schemas are not there (../shared/schemas or $AOM_SCHEMAS_DIR)")
    for line in built.items_ndjson.read_text().splitlines():
        item = json.loads(line)
        url = f"https://schemas.stacspec.org/v{item['stac_version']}/item-spec/json-schema/item.json"
        assert schemas.errors(item, url) == [], item["id"]


def test_every_extension_field_is_declared(built: SampleCatalog) -> None:
    """An item that uses an extension's fields (``mgrs:utm_zone``, ``landsat:correction``, ``proj:``,
    ``eo:``, ``view:`` ...) lists that extension in ``stac_extensions``, so a validator checks them;
    before, the synthetic Sentinel-2 and Landsat items used ``mgrs:`` and ``landsat:`` undeclared."""
    folder = {"proj": "projection"}
    published = ("mgrs", "landsat", "view", "proj", "eo", "raster", "grid")

    def prefixes(node: Any) -> set[str]:
        found: set[str] = set()
        if isinstance(node, dict):
            for key, value in node.items():
                if ":" in key and key.split(":", 1)[0] in published:
                    found.add(key.split(":", 1)[0])
                found |= prefixes(value)
        elif isinstance(node, list):
            for value in node:
                found |= prefixes(value)
        return found

    checked = 0
    for line in built.items_ndjson.read_text().splitlines():
        item = json.loads(line)
        used = prefixes({"properties": item["properties"], "assets": item["assets"]})
        declared = item.get("stac_extensions", [])
        missing = [p for p in used if not any(f"/{folder.get(p, p)}/" in url for url in declared)]
        assert not missing, (item["id"], missing, declared)
        checked += "mgrs" in used or "landsat" in used
    assert checked  # the catalog has items with such fields


def test_every_catalog_document_is_valid_stac(built: SampleCatalog) -> None:
    """catalog.json, each collection and item, and the items of items.parquet as the search reader
    gives them, against their STAC version and the extensions they declare that the shared schemas
    hold (eo and raster v1.1.0 are not among them)."""
    from pipelines.search.local import iter_items
    from pipelines.testing.schemas import SchemaSet

    schemas = SchemaSet.find()
    if schemas is None:
        pytest.skip("the shared schemas are not there (../shared/schemas or $AOM_SCHEMAS_DIR)")
    docs = [json.loads(p.read_text()) for p in built.catalog_json.parent.rglob("*.json")]
    docs = [d for d in docs if isinstance(d, dict) and "stac_version" in d]
    assert {d["type"] for d in docs} == {"Catalog", "Collection", "Feature"}
    parquet = list(iter_items(str(built.items_parquet)))
    assert parquet
    for doc in [*docs, *parquet]:
        assert schemas.stac_errors(doc) == [], doc["id"]


def test_ndjson_and_parquet_hold_the_same_items(built: SampleCatalog, items: dict[str, pystac.Item]) -> None:
    from stac_geoparquet.arrow import stac_table_to_items

    lines = built.items_ndjson.read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert tuple(r["id"] for r in rows) == built.item_ids
    for r in rows:
        assert r["collection"] == items[r["id"]].collection_id
        assert not any(lk["rel"] in ("self", "root", "parent") for lk in r["links"])
        # STAC allows the collection field only beside a collection link (the item schema's rule)
        (coll,) = [lk["href"] for lk in r["links"] if lk["rel"] == "collection"]
        coll_doc = json.loads(Path(url2pathname(urlparse(coll).path)).read_text())
        assert coll.startswith("file:///") and coll_doc["id"] == r["collection"]
        for a in r["assets"].values():
            assert a["href"].startswith("file:///")
            assert Path(url2pathname(urlparse(a["href"]).path)).is_file()
    import pyarrow.parquet as pq

    table = pq.read_table(built.items_parquet)
    back = list(stac_table_to_items(table))
    assert [b["id"] for b in back] == [r["id"] for r in rows]
    assert back[0]["assets"].keys() == rows[0]["assets"].keys()
    assert {b["properties"]["proj:code"] for b in back} == {"EPSG:32631", "EPSG:32632"}


def test_two_utm_zones_and_several_gsds(items: dict[str, pystac.Item]) -> None:
    s2 = _by(items, "sentinel-2-l2a")
    assert {it.properties["proj:code"] for it in s2} == {"EPSG:32631", "EPSG:32632"}
    item = s2[0]
    gsds = {k: a.extra_fields["gsd"] for k, a in item.assets.items()}
    assert gsds["red"] == 10 and gsds["rededge1"] == 20 and gsds["coastal"] == 60 and gsds["scl"] == 20
    assert _grid(item, "red")[1] == (192, 192)
    assert _grid(item, "swir16")[1] == (96, 96)
    assert _grid(item, "nir09")[1] == (32, 32)
    # Landsat WRS grids sit 15 m off the 30 m multiples; HLS (MGRS) grids do not.
    lt, _ = _grid(_by(items, "landsat-c2-l2")[0], "red")
    ht, _ = _grid(_by(items, "hls2-s30")[0], "B04")
    assert lt.c % 30 == 15 and ht.c % 30 == 0


def test_cogs_match_their_metadata(items: dict[str, pystac.Item]) -> None:
    for collection in ("sentinel-2-l2a", "landsat-c2-l2", "hls2-s30", "hls2-l30"):
        item = _by(items, collection)[0]
        cs = load_registry().collection(collection, "sample")
        assert cs.mask.asset in item.assets
        for band in cs.band_names:
            assert cs.assets[band] in item.assets
        for key in item.assets:
            rb = item.assets[key].extra_fields["raster:bands"][0]
            t, shape = _grid(item, key)
            with rasterio.open(_path(item, key)) as ds:
                assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
                assert ds.dtypes[0] == rb["data_type"]
                assert ds.nodata == rb["nodata"]
                assert (ds.height, ds.width) == shape
                assert ds.transform.almost_equals(t)
                assert ds.crs.to_epsg() == int(item.properties["proj:code"].split(":")[1])
                if max(shape) > 256:  # smaller images fit in one 256 px tile
                    assert ds.overviews(1), f"{item.id}/{key} has no overviews"


def test_s2_dn_encoding_and_boa_offset(items: dict[str, pystac.Item]) -> None:
    s2 = _by(items, "sentinel-2-l2a")
    raw = [it for it in s2 if it.properties["s2:processing_baseline"] == "05.00"]
    assert len(raw) == 1 and "earthsearch:boa_offset_applied" not in raw[0].properties
    cs = load_registry().collection("sentinel-2-l2a", "sample")
    for item in s2:
        scale, offset = cs.scale_offset(item.properties)
        rb = item.assets["red"].extra_fields["raster:bands"][0]
        assert rb["scale"] == pytest.approx(scale) and rb["offset"] == pytest.approx(offset)
        expected = -0.1 if item in raw else 0.0
        assert offset == pytest.approx(expected)
        dn = _read(item, "red")
        if item in raw:
            assert dn[dn > 0].min() >= 1000
        refl = _reflectance(item, "red")
        nir = _reflectance(item, "nir")
        clear = ~cs.mask.invalid(np.repeat(np.repeat(_read(item, "scl"), 2, 0), 2, 1))
        truth = _truth(item, "red")
        veg = clear & (truth == VEGETATION)
        assert veg.sum() > 100
        ndvi = (nir - refl) / (nir + refl)
        assert np.nanmedian(ndvi[veg]) > 0.6
        # the recovered reflectance is the class spectrum (texture averages to 1, per-date gain +/-2 %)
        expected_red = band_reflectance("vegetation", 664.6, 31.0)
        assert np.nanmedian(refl[veg]) == pytest.approx(expected_red, abs=0.01)


def test_bands_correlate_like_real_bands(items: dict[str, pystac.Item]) -> None:
    item = _by(items, "sentinel-2-l2a")[0]
    clear = ~load_registry().collection("sentinel-2-l2a", "sample").mask.invalid(_read(item, "scl"))
    blue, green, red = (_reflectance(item, k)[::2, ::2][clear] for k in ("blue", "green", "red"))
    swir16, swir22 = (_reflectance(item, k)[clear] for k in ("swir16", "swir22"))
    assert np.corrcoef(blue, green)[0, 1] > 0.8
    assert np.corrcoef(green, red)[0, 1] > 0.8
    assert np.corrcoef(swir16, swir22)[0, 1] > 0.8
    for name in LANDCOVER_CLASSES:
        assert LANDCOVER_SPECTRA[name][0][0] <= 443 and LANDCOVER_SPECTRA[name][-1][0] >= 2200


def test_clouds_are_bright_and_flagged(items: dict[str, pystac.Item]) -> None:
    flagged = {"sentinel-2-l2a": 0, "landsat-c2-l2": 0, "hls2-s30": 0, "hls2-l30": 0}
    for item in items.values():
        cid = item.collection_id or ""
        if cid == "sentinel-2-l2a":
            scl = _read(item, "scl")
            cloud = np.isin(scl, (8, 9))
            blue = _reflectance(item, "blue")[::2, ::2]
            if (scl == 9).sum() > 20:
                assert np.nanmean(blue[scl == 9]) > 0.4
                assert np.nanmean(blue[np.isin(scl, (4, 5))]) < 0.2
            valid = scl != 0
        elif cid == "landsat-c2-l2":
            qa = _read(item, "qa_pixel")
            cloud = (qa & (1 << 3)) != 0
            valid = qa != 1
        else:
            fmask = _read(item, "Fmask")
            cloud = ((fmask & 2) != 0) & (fmask != 255)
            valid = fmask != 255
        flagged[cid] += int(cloud.sum())
        measured = 100.0 * cloud[valid].mean() if valid.any() else 0.0
        if cid != "landsat-c2-l2":  # Landsat counts dilated-cloud edges too
            assert item.properties["eo:cloud_cover"] == pytest.approx(measured, abs=0.01)
    assert all(n > 0 for n in flagged.values()), flagged


def test_nodata_swath_matches_the_mask(items: dict[str, pystac.Item]) -> None:
    swathed = 0
    for item in items.values():
        cid = item.collection_id or ""
        cs = load_registry().collection(cid, "sample")
        key = {"sentinel-2-l2a": "rededge1", "landsat-c2-l2": "red"}.get(cid, "B04")  # same grid as the mask
        band = _read(item, key)
        mask = _read(item, cs.mask.asset or "")
        band_nodata = band == cs.nodata
        assert np.array_equal(band_nodata, mask == cs.mask.fill_value), item.id
        swathed += int(band_nodata.any())
    assert swathed == 8  # date index 1 of each (zone, collection)


def test_sensors_agree_on_the_ground(items: dict[str, pystac.Item]) -> None:
    """S2 red at 10 m averaged to 30 m equals HLS S30 B04 of the same day (same sky, same ground)."""
    s2 = items["SYN_S2_32631_20230601"]
    hls = items["SYN_HLSS30_32631_20230601"]
    r10 = _reflectance(s2, "red")
    r30 = _reflectance(hls, "B04")
    mean10 = r10.reshape(64, 3, 64, 3).mean(axis=(1, 3))
    ok = np.isfinite(mean10) & np.isfinite(r30)
    assert ok.mean() > 0.5
    assert np.nanmean(np.abs(mean10 - r30)[ok]) < 0.01
    # Landsat sees the same land cover: its QA water bit matches the ground truth.
    ls = items["SYN_LC08_32631_20230604"]
    qa = _read(ls, "qa_pixel")
    clear = (qa & 0b11111) == 0
    water_qa = (qa & (1 << 7)) != 0
    truth = _truth(ls, "qa_pixel") == WATER
    assert (water_qa[clear] == truth[clear]).mean() > 0.97


def test_landcover_truth_is_geographic(items: dict[str, pystac.Item]) -> None:
    from odc.geo.geobox import GeoBox

    item = items["SYN_S2_32632_20230601"]
    t, shape = _grid(item, "scl")
    gbox = GeoBox(shape, t, "EPSG:32632")
    by_box = generate_landcover(SPEC, gbox)
    assert np.array_equal(by_box, _truth(item, "scl"))
    assert by_box.dtype == np.uint8 and by_box.max() < len(LANDCOVER_CLASSES)
    # Zone 31 and zone 32 grids agree where they overlap: compare the truth at the same points.
    from pyproj import Transformer

    to31 = Transformer.from_crs("EPSG:32632", "EPSG:32631", always_xy=True)
    rows, cols = np.mgrid[0 : shape[0] : 7, 0 : shape[1] : 7]
    x32, y32 = apply_transform(t, cols + 0.5, rows + 0.5)
    x31, y31 = to31.transform(x32, y32)
    from pipelines.samples.landcover import _classify, _local_km

    to_ll = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    lon, lat = to_ll.transform(x31, y31)
    same = _classify(SPEC, *_local_km(SPEC, np.asarray(lon), np.asarray(lat))) == by_box[rows, cols]
    assert same.mean() > 0.99
    # and the item's own classes (SCL) follow the truth
    scl = _read(item, "scl")
    clear = np.isin(scl, (4, 5, 6, 11))
    assert ((scl == 6) == (by_box == WATER))[clear].mean() > 0.97
    big = generate_landcover(SPEC, (730000.0, 4980000.0, 750000.0, 5000000.0), "EPSG:32631", 100.0)
    assert set(np.unique(big)) == set(range(len(LANDCOVER_CLASSES)))


def test_rebuild_is_idempotent(tmp_path: Path) -> None:
    spec = SyntheticSpec(seed=3, scene_size_m=960.0, n_dates=1, collections=("sentinel-2-l2a", "hls2-l30"))
    first = build_sample_catalog(tmp_path, real_dir=None, synthetic=spec)
    assert first.notes and "synthetic items only" in first.notes[0]
    jsons = {p: p.read_bytes() for p in tmp_path.rglob("*.json")}
    cogs = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.tif")}
    ndjson = first.items_ndjson.read_bytes()
    second = build_sample_catalog(tmp_path, real_dir=None, synthetic=spec)
    assert second == first
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.json")} == jsons
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.tif")} == cogs
    assert second.items_ndjson.read_bytes() == ndjson
    # a different spec replaces the old items (no stale files left behind)
    third = build_sample_catalog(
        tmp_path,
        real_dir=None,
        synthetic=SyntheticSpec(seed=3, scene_size_m=960.0, n_dates=1, collections=("hls2-l30",)),
    )
    assert third.collections == ("hls2-l30",)
    assert not (tmp_path / "sentinel-2-l2a").exists()
    assert sorted(p.name for p in (tmp_path / "data" / "synthetic").iterdir()) == list(third.item_ids)


def test_seed_changes_the_scene(tmp_path: Path) -> None:
    a = generate_landcover(
        SyntheticSpec(seed=1), (733560.0, 4985400.0, 737400.0, 4989240.0), "EPSG:32631", 60.0
    )
    b = generate_landcover(
        SyntheticSpec(seed=2), (733560.0, 4985400.0, 737400.0, 4989240.0), "EPSG:32631", 60.0
    )
    assert a.shape == (64, 64) and (a != b).mean() > 0.2


def test_default_real_data_dir_honours_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(REAL_DATA_ENV, str(tmp_path / "elsewhere"))
    assert default_real_data_dir() == tmp_path / "elsewhere"
    out = build_sample_catalog(
        tmp_path / "cat", synthetic=SyntheticSpec(scene_size_m=960.0, n_dates=1, collections=("hls2-s30",))
    )
    assert any(str(tmp_path / "elsewhere") in n for n in out.notes)


@pytest.mark.parametrize(
    "kwargs",
    [{"scene_size_m": 1000.0}, {"n_dates": 0}, {"collections": ("modis-mcd43a4",)}, {"epsg_codes": (4326,)},
     {"cloud_fraction": 1.5}],
)  # fmt: skip
def test_spec_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SyntheticSpec(**kwargs)

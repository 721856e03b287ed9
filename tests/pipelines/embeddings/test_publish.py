"""`aom publish`: per-tile COGs that GDAL and odc-stac open, holding the vectors pipelines.query reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipelines.embeddings import DECODE_LUT, EmbeddingsVersion
from pipelines.query import open_embeddings
from pipelines.testing import build_synthetic_store, synthetic_version
from pipelines.testing.cog import cog_problems, main_ifd_offset
from pipelines.testing.schemas import EMB_SCHEMA, PROJ_SCHEMA, STAC_COLLECTION_1_0, STAC_ITEM_1_0, SchemaSet

BBOX = (5.985, 44.995, 6.015, 45.005)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("pub") / "emb"
    v = synthetic_version(dim=16, times=("2024-06-01", "2024-07-01"))
    build_synthetic_store(str(root), bbox=BBOX, version=v, hole_tokens=5, stac=False)
    res = CliRunner().invoke(app, ["publish", "--embeddings", str(root)])
    assert res.exit_code == 0, res.output
    assert "published 4 tile-time(s)" in res.output  # 2 tiles x 2 times
    return root, v.name


def _items(root: Path, name: str) -> list[Path]:
    return sorted((root / "published" / name / "items").glob("*.json"))


def test_publish_is_exactly_once(published: tuple[Path, str]) -> None:
    root, name = published
    before = {p: p.stat().st_mtime_ns for p in (root / "published").rglob("*.tif")}
    res = CliRunner().invoke(app, ["publish", "--embeddings", str(root), "--version", name])
    assert res.exit_code == 0, res.output
    assert "published 0 tile-time(s)" in res.output and "4 already published" in res.output
    assert {p: p.stat().st_mtime_ns for p in (root / "published").rglob("*.tif")} == before
    bad = CliRunner().invoke(app, ["publish", "--embeddings", str(root), "--encoding", "png"])
    assert bad.exit_code == 2 and "int8-sqrt, int8-linear" in bad.output


def test_cogs_open_with_gdal_dim_bands_and_georeferencing(published: tuple[Path, str]) -> None:
    import rasterio

    root, name = published
    tifs = sorted((root / "published" / name).rglob("*.tif"))
    assert len(tifs) == 4
    emb = open_embeddings(str(root), name)
    for path in tifs:
        assert cog_problems(path) == [], path
        assert main_ifd_offset(path) < 1024
        tile_id, ti = path.stem, int(path.parent.name[1:])
        epsg, ix, iy = (int(p) for p in tile_id.split("_"))
        s = emb.version.tile_size_m
        with rasterio.open(path) as ds:
            assert ds.count == 16 and ds.dtypes[0] == "int8" and ds.nodata == -128
            assert ds.crs.to_epsg() == epsg
            assert tuple(ds.transform)[:6] == (80.0, 0.0, ix * s, 0.0, -80.0, (iy + 1) * s)
            assert ds.descriptions[0] == "emb_0000" and "sign(q)" in ds.tags()["AOM_ENCODING"]
            assert ds.block_shapes[0] == (128, 128)  # one block: the COG driver's minimum
            codes = ds.read()  # [dim, y, x]
        ref = next(r for r in emb.tiles(ti)[epsg] if r.tile_id == tile_id)
        n = emb.version.tokens_per_tile
        want = emb.read_window(epsg, ti, slice(ref.row0, ref.row0 + n), slice(ref.col0, ref.col0 + n))
        got = DECODE_LUT[codes.view(np.uint8)].transpose(1, 2, 0)
        np.testing.assert_array_equal(got, want)


def test_odc_stac_load_returns_the_query_vectors(published: tuple[Path, str]) -> None:
    import odc.stac
    import pystac

    root, name = published
    emb = open_embeddings(str(root), name)
    items = [pystac.Item.from_file(str(p)) for p in _items(root, name)]
    zone = [i for i in items if i.properties["proj:code"] == "EPSG:32631"]
    assert len(zone) == 2  # one tile, two times
    ds = odc.stac.load(zone, chunks=None)
    bands = [f"embeddings.{i + 1}" for i in range(16)]
    assert sorted(ds.data_vars, key=lambda b: int(str(b).split(".")[1])) == bands
    stacked = np.stack([ds[b].values for b in bands], axis=-1)  # [time, y, x, dim]
    assert [str(t)[:10] for t in ds.time.values] == ["2024-06-01", "2024-07-01"]
    ref = emb.tiles(0)[32631][0]
    n = emb.version.tokens_per_tile
    for ti in (0, 1):
        want = emb.read_window(32631, ti, slice(ref.row0, ref.row0 + n), slice(ref.col0, ref.col0 + n))
        np.testing.assert_array_equal(DECODE_LUT[stacked[ti].view(np.uint8)], want)
        assert np.isnan(want[:5, :5]).all() and np.isfinite(want[6:, 6:]).all()
    g = emb.grid(32631)
    np.testing.assert_allclose(ds.x.values, g.x_coords()[ref.col0 : ref.col0 + n])
    np.testing.assert_allclose(ds.y.values, g.y_coords()[ref.row0 : ref.row0 + n])


def test_published_stac_validates(published: tuple[Path, str]) -> None:
    schemas = SchemaSet.find()
    if schemas is None:
        pytest.skip("published schemas not found at ../shared/schemas (or $AOM_SCHEMAS_DIR)")
    root, name = published
    coll = json.loads((root / "published" / name / "collection.json").read_text())
    for url in (EMB_SCHEMA, STAC_COLLECTION_1_0, PROJ_SCHEMA):
        assert schemas.errors(coll, url) == [], url
    assert schemas.item_assets_errors(coll) == []  # item_assets on STAC 1.0.0 needs the extension
    for path in _items(root, name):
        item = json.loads(path.read_text())
        for url in (EMB_SCHEMA, STAC_ITEM_1_0, PROJ_SCHEMA):
            assert schemas.errors(item, url) == [], (path.name, url)
        assert item["assets"]["embeddings"]["raster:bands"][0] == {"data_type": "int8", "nodata": -128}
    # every document against the STAC version and the extensions it declares (those the folder holds;
    # raster v1.1.0 and item-assets v1.0.0 are not among ../shared/schemas: item_assets checked by rule)
    for path in sorted((root / "published" / name).rglob("*.json")):
        assert schemas.stac_errors(json.loads(path.read_text())) == [], path.name


def test_linear_encoding_carries_scale_for_loaders(tmp_path: Path) -> None:
    import rasterio

    from pipelines.embeddings import publish_cogs

    v = synthetic_version(dim=8)
    build_synthetic_store(str(tmp_path / "e"), bbox=BBOX, version=v, stac=False)
    publish_cogs(str(tmp_path / "e"), v.name, encoding="int8-linear")
    emb = open_embeddings(str(tmp_path / "e"), v.name)
    n = v.tokens_per_tile
    for path in sorted((tmp_path / "e" / "published").rglob("*.tif")):
        assert cog_problems(path) == []
        with rasterio.open(path) as ds:
            assert ds.scales == (1 / 127,) * 8 and ds.offsets == (0.0,) * 8
            codes = ds.read()
        epsg = int(path.stem.split("_")[0])
        ref = next(r for r in emb.tiles(0)[epsg] if r.tile_id == path.stem)
        want = emb.read_window(epsg, 0, slice(ref.row0, ref.row0 + n), slice(ref.col0, ref.col0 + n))
        got = codes.transpose(1, 2, 0).astype(np.float32) / 127
        assert np.abs(got - want).max() <= 0.5 / 127 + 1e-6  # one more rounding, half a step
        item = json.loads(next((tmp_path / "e" / "published" / v.name / "items").glob("*.json")).read_text())
        assert item["assets"]["embeddings"]["raster:bands"][0]["scale"] == pytest.approx(1 / 127)


def _published_float16(root: Path) -> EmbeddingsVersion:
    """A float16 version (what ``aom embed`` writes for the spectral embedding), published."""
    from pipelines.embeddings import publish_cogs

    v = synthetic_version(name="aom-synthetic-f16-0123456789ab", dim=8, quantisation="float16")
    build_synthetic_store(str(root), bbox=BBOX, version=v, stac=False)
    assert publish_cogs(str(root), v.name).written
    return v


def test_float16_version_publishes_float32_vectors(tmp_path: Path) -> None:
    """float32 COGs with NaN nodata holding the stored values, and STAC bands that say so."""
    import rasterio

    v = _published_float16(tmp_path / "e")
    emb = open_embeddings(str(tmp_path / "e"), v.name)
    n = v.tokens_per_tile
    paths = sorted((tmp_path / "e" / "published").rglob("*.tif"))
    assert paths
    for path in paths:
        assert cog_problems(path) == []
        with rasterio.open(path) as ds:
            assert ds.count == 8 and ds.dtypes[0] == "float32" and np.isnan(ds.nodata)
            values = ds.read()
        epsg = int(path.stem.split("_")[0])
        ref = next(r for r in emb.tiles(0)[epsg] if r.tile_id == path.stem)
        want = emb.read_window(epsg, 0, slice(ref.row0, ref.row0 + n), slice(ref.col0, ref.col0 + n))
        np.testing.assert_array_equal(values.transpose(1, 2, 0), want)
    for path in (tmp_path / "e" / "published" / v.name / "items").glob("*.json"):
        item = json.loads(path.read_text())
        assert item["assets"]["embeddings"]["raster:bands"][0] == {"data_type": "float32", "nodata": "nan"}


def test_float16_items_validate(tmp_path: Path) -> None:
    schemas = SchemaSet.find()
    if schemas is None:
        pytest.skip("published schemas not found at ../shared/schemas (or $AOM_SCHEMAS_DIR)")
    v = _published_float16(tmp_path / "e")
    for path in (tmp_path / "e" / "published" / v.name / "items").glob("*.json"):
        item = json.loads(path.read_text())
        for url in (EMB_SCHEMA, STAC_ITEM_1_0, PROJ_SCHEMA):
            assert schemas.errors(item, url) == [], (path.name, url)


def _decode(codes: np.ndarray, quantization: dict | None) -> np.ndarray:
    """What a reader following the item's ``emb:quantization`` makes of the COG's values."""
    if quantization is None:  # not quantized: the values are the vectors
        return codes.astype(np.float32)
    if quantization["method"] == "int8-sqrt":
        return DECODE_LUT[codes.view(np.uint8)]
    assert quantization["method"] == "linear", quantization
    v = codes.astype(np.float32) * quantization["scale"][0] + quantization.get("offset", [0.0])[0]
    return np.where(codes == -128, np.nan, v)


def _published_metadata_matches_cogs(root: Path, name: str) -> None:
    """Every published item's ``emb:quantization``, ``raster:bands`` and the collection's ``data_type``
    describe the COG it points at: decoding its values by what the item says gives the store's vectors;
    the collection and items validate against the published schemas."""
    import rasterio

    emb = open_embeddings(str(root), name)
    n = emb.version.tokens_per_tile
    base = root / "published" / name
    coll = json.loads((base / "collection.json").read_text())
    paths = sorted((base / "items").glob("*.json"))
    assert paths
    for path in paths:
        item = json.loads(path.read_text())
        asset = item["assets"]["embeddings"]
        with rasterio.open(base / "items" / asset["href"]) as ds:
            values, dtype = ds.read(), ds.dtypes[0]
        assert coll["data_type"] == dtype and coll["summaries"]["data_type"] == [dtype]
        assert asset["raster:bands"][0]["data_type"] == dtype
        quantization = item["properties"].get("emb:quantization")
        if quantization is not None:
            assert quantization["quantized_dtype"] == dtype
        tile_id, ti = item["id"].rsplit("_t", 1)
        epsg = int(tile_id.split("_")[0])
        ref = next(r for r in emb.tiles(int(ti))[epsg] if r.tile_id == tile_id)
        want = emb.read_window(epsg, int(ti), slice(ref.row0, ref.row0 + n), slice(ref.col0, ref.col0 + n))
        got = _decode(values, quantization).transpose(1, 2, 0)
        assert (np.isnan(got) == np.isnan(want)).all()
        assert np.nanmax(np.abs(got - want)) <= 0.5 / 127 + 1e-6, (path.name, quantization)
    schemas = SchemaSet.find()
    if schemas is not None:
        for url in (EMB_SCHEMA, STAC_COLLECTION_1_0, PROJ_SCHEMA):
            assert schemas.errors(coll, url) == [], url
        assert schemas.item_assets_errors(coll) == []
        for path in paths:
            for url in (EMB_SCHEMA, STAC_ITEM_1_0, PROJ_SCHEMA):
                assert schemas.errors(json.loads(path.read_text()), url) == [], (path.name, url)


def test_linear_cogs_items_say_linear(tmp_path: Path) -> None:
    """--encoding int8-linear: emb:quantization says linear with scale 1/127, not the store's int8-sqrt
    (a reader following it got vectors off by up to 0.22 per component)."""
    from pipelines.embeddings import publish_cogs

    v = synthetic_version(dim=8)
    build_synthetic_store(str(tmp_path / "e"), bbox=BBOX, version=v, hole_tokens=3, stac=False)
    publish_cogs(str(tmp_path / "e"), v.name, encoding="int8-linear")
    _published_metadata_matches_cogs(tmp_path / "e", v.name)
    item = json.loads(next((tmp_path / "e" / "published" / v.name / "items").glob("*.json")).read_text())
    assert item["properties"]["emb:quantization"] == {
        "method": "linear",
        "original_dtype": "float32",
        "quantized_dtype": "int8",
        "scale": [1 / 127],
        "offset": [0.0],
    }


def test_default_and_float16_publications_describe_their_cogs(
    published: tuple[Path, str], tmp_path: Path
) -> None:
    """int8-sqrt COGs say int8-sqrt; a float16 store's float32 COGs say float32 (not the store's float16)
    and carry no emb:quantization (their values need no decoding)."""
    v = _published_float16(tmp_path / "e")
    _published_metadata_matches_cogs(tmp_path / "e", v.name)
    _published_metadata_matches_cogs(*published)
    coll = json.loads((tmp_path / "e" / "published" / v.name / "collection.json").read_text())
    assert coll["data_type"] == "float32"
    for path in (tmp_path / "e" / "published" / v.name / "items").glob("*.json"):
        assert "emb:quantization" not in json.loads(path.read_text())["properties"]


def test_publish_refuses_to_mix_encodings(tmp_path: Path) -> None:
    """Items of one encoding exist (one deleted, the documented way to republish it): another --encoding
    is refused with exit 2 naming the encoding held, and nothing is written; the same encoding
    republishes the deleted item."""
    root = tmp_path / "e"
    v = synthetic_version(dim=8)
    build_synthetic_store(str(root), bbox=BBOX, version=v, stac=False)
    assert CliRunner().invoke(app, ["publish", "--embeddings", str(root)]).exit_code == 0
    base = root / "published" / v.name
    gone = sorted((base / "items").glob("*.json"))[0]
    gone.unlink()
    before = {p: p.stat().st_mtime_ns for p in base.rglob("*") if p.is_file()}
    res = CliRunner().invoke(app, ["publish", "--embeddings", str(root), "--encoding", "int8-linear"])
    assert res.exit_code == 2, res.output
    msg = " ".join(res.output.split())
    assert "already holds int8-sqrt COGs" in msg and "--encoding int8-linear" in msg
    assert "move that folder aside" in msg
    assert {p: p.stat().st_mtime_ns for p in base.rglob("*") if p.is_file()} == before
    items = [json.loads(p.read_text()) for p in (base / "items").glob("*.json")]
    assert {i["assets"]["embeddings"]["aom:encoding"].split(":")[0] for i in items} == {"int8-sqrt"}
    res = CliRunner().invoke(app, ["publish", "--embeddings", str(root)])
    assert res.exit_code == 0 and "published 1 tile-time(s)" in res.output, res.output
    assert gone.exists()

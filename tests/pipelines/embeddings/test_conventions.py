"""Store format 3 (format 2's band-first layout, tile vectors on the zone's tile dims): Zarr conventions
registered and valid (geoemb:, proj:, spatial:), strict-JSON metadata, the whole store opens as one
xarray DataTree, and format-1 and format-2 stores still read the same vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.embeddings import FORMAT_VERSION, create_version, version_format
from pipelines.query import open_embeddings, similar
from pipelines.testing import SyntheticScene, build_synthetic_store, synthetic_version
from pipelines.testing.schemas import (
    GEOEMB_SCHEMA,
    ZARR_CONVENTIONS_SCHEMA,
    ZARR_PROJ_SCHEMA,
    ZARR_SPATIAL_SCHEMA,
    SchemaSet,
)
from tests.pipelines.embeddings.support import assert_datatree_matches_query, open_store_datatree

BBOX = (5.985, 44.995, 6.015, 45.005)


def _strict(path: Path) -> dict:
    def no_constant(name: str) -> None:
        raise AssertionError(f"{path}: non-JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=no_constant)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    base = tmp_path_factory.mktemp("fmt")
    v = synthetic_version(dim=16, times=("2024-06-01", "2024-07-01"))
    scene = SyntheticScene(dim=16)
    build_synthetic_store(str(base / "f2"), bbox=BBOX, version=v, scene=scene, times_to_write=[0], stac=False)
    create_version(str(base / "f1"), v, fmt=1)
    build_synthetic_store(str(base / "f1"), bbox=BBOX, version=v, scene=scene, times_to_write=[0], stac=False)
    return base / "f2", base / "f1", v.name


def test_conventions_registered_and_valid(stores: tuple[Path, Path, str]) -> None:
    schemas = SchemaSet.find()
    if schemas is None:
        pytest.skip("published schemas not found at ../shared/schemas (or $AOM_SCHEMAS_DIR)")
    root, _, name = stores
    version_node = _strict(root / name / "zarr.json")
    assert schemas.errors(version_node, GEOEMB_SCHEMA) == []
    assert schemas.errors(version_node, ZARR_CONVENTIONS_SCHEMA) == []
    attrs = version_node["attributes"]
    assert attrs["geoemb:type"] == "chip" and attrs["geoemb:data_type"] == "int8"
    assert attrs["geoemb:quantization"]["method"] == "int8-sqrt"  # an object, not a string
    for zone in ("32631", "32632"):
        node = _strict(root / name / zone / "zarr.json")
        for url in (ZARR_PROJ_SCHEMA, ZARR_SPATIAL_SCHEMA, ZARR_CONVENTIONS_SCHEMA):
            assert schemas.errors(node, url) == [], (zone, url)
        uuids = {c["uuid"] for c in node["attributes"]["zarr_conventions"]}
        assert {"f17cb550-5864-4468-aeb7-f3180cfb622f", "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4"} <= uuids
        tiles = _strict(root / name / zone / "tiles" / "zarr.json")
        for url in (ZARR_PROJ_SCHEMA, ZARR_SPATIAL_SCHEMA, ZARR_CONVENTIONS_SCHEMA):
            assert schemas.errors(tiles, url) == [], (zone, "tiles", url)
        assert tiles["attributes"]["spatial:dimensions"] == ["tile_y", "tile_x"]
    # the check is real: a version group without the required geoemb fields fails
    bad = json.loads(json.dumps(version_node))
    del bad["attributes"]["geoemb:source_data"]
    bad["attributes"]["geoemb:quantization"] = "int8-sqrt"
    assert len(schemas.errors(bad, GEOEMB_SCHEMA)) >= 1


def test_every_metadata_document_is_strict_json(stores: tuple[Path, Path, str]) -> None:
    for root in stores[:2]:
        docs = list(root.rglob("zarr.json")) + list(root.rglob("*.json"))
        assert docs
        for path in docs:
            _strict(path)  # no NaN / Infinity anywhere (invalid JSON for most readers)


def test_band_first_layout_opens_with_dim_as_bands(stores: tuple[Path, Path, str]) -> None:
    import xarray as xr

    from pipelines.embeddings import zarr_store

    root, old, name = stores
    assert version_format(str(root), name) == FORMAT_VERSION == 3 and version_format(str(old), name) == 1
    ds = xr.open_zarr(zarr_store(str(root), read_only=True), group=f"{name}/32631", consolidated=False)
    assert ds.embeddings.dims == ("time", "dim", "y", "x")
    ds1 = xr.open_zarr(zarr_store(str(old), read_only=True), group=f"{name}/32631", consolidated=False)
    assert ds1.embeddings.dims == ("time", "y", "x", "dim")


def test_format_1_store_reads_the_same_vectors(stores: tuple[Path, Path, str]) -> None:
    new, old, name = stores
    a = open_embeddings(str(new), name)
    b = open_embeddings(str(old), name)
    for epsg in a.zones:
        da = a.dataset(epsg).embeddings.isel(time=0)
        db = b.dataset(epsg).embeddings.isel(time=0)
        assert da.dims == db.dims == ("y", "x", "dim")
        ref = a.tiles(0)[epsg][0]
        n = a.version.tokens_per_tile
        wa = a.read_window(epsg, 0, slice(ref.row0, ref.row0 + n), slice(ref.col0, ref.col0 + n))
        wb = b.read_window(epsg, 0, slice(ref.row0, ref.row0 + n), slice(ref.col0, ref.col0 + n))
        np.testing.assert_array_equal(wa, wb)
        assert np.isfinite(wa).any()
        np.testing.assert_array_equal(
            da.isel(y=slice(ref.row0, ref.row0 + n), x=slice(ref.col0, ref.col0 + n)).values, wa
        )
    q = np.random.default_rng(3).standard_normal(16).astype(np.float32)
    ra, rb = similar(a, vectors=q, k=5), similar(b, vectors=q, k=5)
    np.testing.assert_allclose(ra.scores, rb.scores)
    assert ra.tile_id == rb.tile_id and (ra.row == rb.row).all() and (ra.col == rb.col).all()


@pytest.fixture(scope="module")
def fmt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A store of a version created as format 2 (tile vectors on the tiles group's own ``y``/``x``)."""
    root = tmp_path_factory.mktemp("fmt2") / "f2"
    v = synthetic_version(dim=16, times=("2024-06-01", "2024-07-01"))
    create_version(str(root), v, fmt=2)
    build_synthetic_store(
        str(root), bbox=BBOX, version=v, scene=SyntheticScene(dim=16), times_to_write=[0], stac=True
    )
    return root, v.name


def test_a_new_store_opens_as_one_datatree_with_the_vectors_query_reads(
    stores: tuple[Path, Path, str],
) -> None:
    """``xarray.open_datatree(<store>, engine="zarr")`` failed on every store with consolidated tile vectors:
    ``tiles/`` had its own ``x``/``y`` (tile centres), which cannot align with the zone's ``x``/``y``
    (token centres). From format 3 ``tiles/vectors`` lies on the zone's ``tile_y``/``tile_x``."""
    root, _, name = stores
    tree = open_store_datatree(str(root))
    vectors = tree[f"/{name}/32631/tiles"]["vectors"]
    assert vectors.dims == ("time", "dim", "tile_y", "tile_x")
    assert assert_datatree_matches_query(str(root), name) >= 2


def test_a_format_2_store_keeps_its_tile_grid_and_reads_the_same(
    fmt2: tuple[Path, str], stores: tuple[Path, Path, str]
) -> None:
    """A version created as format 2 keeps its layout when its tile vectors are consolidated (a rerun
    finishes it in its own format), is read by pipelines.query like a new one, and (the reason for
    format 3) still cannot be opened as one DataTree: open it group by group."""
    import xarray as xr

    from pipelines.embeddings import zarr_store
    from pipelines.query import open_embeddings, tile_vectors

    root, name = fmt2
    assert version_format(str(root), name) == 2
    ds = xr.open_zarr(zarr_store(str(root), read_only=True), group=f"{name}/32631/tiles", consolidated=False)
    assert ds.vectors.dims == ("time", "dim", "y", "x")
    with pytest.raises(ValueError, match="not aligned with its parents"):
        open_store_datatree(str(root))
    new, old = open_embeddings(str(stores[0]), name), open_embeddings(str(root), name)
    for zone in new.zones:
        a, b = tile_vectors(new, zone, 0), tile_vectors(old, zone, 0)
        assert a.consolidated and b.consolidated
        np.testing.assert_array_equal(a.vectors, b.vectors)
        np.testing.assert_array_equal(a.x, b.x)


def test_the_documented_xarray_calls_open_the_store_without_a_warning(stores: tuple[Path, Path, str]) -> None:
    """docs/embeddings.md's calls, as written, with warnings as errors (pytest's config). The store has
    no consolidated metadata (its groups grow tile by tile under many writers), so without
    ``consolidated=False`` xarray warns "Failed to open Zarr store with consolidated metadata" (a
    failure for code run with warnings as errors); the docs showed two calls without it."""
    import re
    import warnings

    import xarray as xr

    root, _, name = stores
    doc = (Path(__file__).resolve().parents[3] / "docs" / "embeddings.md").read_text()
    calls = re.findall(r"`(?:xarray|xr)\.open_(?:zarr|datatree)\(([^`]*)`", doc)
    assert len(calls) >= 4 and [c for c in calls if "consolidated=False" not in c] == []
    zone = xr.open_zarr(str(root), group=f"{name}/32631", consolidated=False)
    tiles = xr.open_zarr(str(root), group=f"{name}/32631/tiles", consolidated=False)
    assert zone.embeddings.dims == ("time", "dim", "y", "x")
    assert tiles.vectors.dims[-2:] == ("tile_y", "tile_x")
    with warnings.catch_warnings():  # the filter the docs show for the non-Zarr folders at the root
        warnings.filterwarnings("ignore", message="Object at .* is not recognized as a component")
        tree = xr.open_datatree(str(root), engine="zarr", consolidated=False)
    assert tree[f"/{name}/32631/tiles"].ds.vectors.shape == tiles.vectors.shape
    with pytest.warns(RuntimeWarning, match="consolidated metadata"):  # why the docs pass it
        xr.open_zarr(str(root), group=f"{name}/32631/tiles")

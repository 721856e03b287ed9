"""One store format, one reader and writer: a cube run and the synthetic generator both write through
``CubeStore``, and the same reader calls (records, groups, group checks, windows) open both alike."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

from pipelines.cubes import LAYOUT_VERSION, CubeStore, CubeStoreError, GroupMeta, group_path, write_cubes
from pipelines.errors import CubeDataError
from pipelines.outputs import PROJ_CONVENTION, SPATIAL_CONVENTION
from pipelines.testing import SENTINEL2, write_synthetic_cubes
from pipelines.testing.schemas import (
    ZARR_CONVENTIONS_SCHEMA,
    ZARR_PROJ_SCHEMA,
    ZARR_SPATIAL_SCHEMA,
    SchemaSet,
)
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
        str(name): (tuple(var.dims), var.dtype.kind, {k for k in var.attrs if k != "coordinates"})
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


def _group_dirs(root: str) -> list[Path]:
    store = CubeStore.open(root)
    return [Path(root, group_path(t, *key)) for t in store.complete_tiles() for key in store.groups(t)]


def test_groups_carry_the_proj_and_spatial_zarr_conventions(stores: dict[str, str]) -> None:
    """Every group of a cube store (run and synthetic alike) registers the proj:/spatial: Zarr conventions,
    valid against their published schemas, and says what its CF grid mapping says: the CRS and the
    transform rioxarray and odc-geo read (before, cube groups had CF metadata only)."""
    import rioxarray  # noqa: F401  (registers .rio)

    schemas = SchemaSet.find()
    if schemas is None:
        pytest.skip("published schemas not found at ../shared/schemas (or $AOM_SCHEMAS_DIR)")
    for kind, root in stores.items():
        dirs = _group_dirs(root)
        assert len(dirs) == 3, kind
        for gdir in dirs:
            node = json.loads((gdir / "zarr.json").read_text())
            for url in (ZARR_PROJ_SCHEMA, ZARR_SPATIAL_SCHEMA, ZARR_CONVENTIONS_SCHEMA):
                assert schemas.errors(node, url) == [], (kind, gdir, url)
            attrs = node["attributes"]
            uuids = {c["uuid"] for c in attrs["zarr_conventions"]}
            assert uuids == {PROJ_CONVENTION["uuid"], SPATIAL_CONVENTION["uuid"]}
            ds = xr.open_zarr(gdir, consolidated=True, zarr_format=3)
            assert attrs["proj:code"] == f"EPSG:{ds.rio.crs.to_epsg()}" == "EPSG:32631", (kind, gdir)
            with warnings.catch_warnings():  # rioxarray 0.19 composes with affine's deprecated `*`
                warnings.filterwarnings("ignore", "Use `@` matmul", PendingDeprecationWarning)
                rio_transform = list(ds.rio.transform())[:6]
            assert attrs["spatial:transform"] == rio_transform == list(ds.odc.geobox.affine)[:6]
            assert attrs["spatial:shape"] == [ds.sizes["y"], ds.sizes["x"]]
            assert attrs["spatial:dimensions"] == ["y", "x"] and attrs["spatial:registration"] == "pixel"
            assert attrs["spatial:bbox"] == list(ds.odc.geobox.boundingbox)
    # the check is real: a group without proj:code fails the proj: schema
    bad = json.loads((_group_dirs(stores["synthetic"])[0] / "zarr.json").read_text())
    del bad["attributes"]["proj:code"]
    assert schemas.errors(bad, ZARR_PROJ_SCHEMA) != []


def test_groups_written_before_the_conventions_are_still_read(stores: dict[str, str], tmp_path: Path) -> None:
    """Stores written before the proj:/spatial: attributes existed are read as before (readers use the CF
    metadata and the records, never the convention attributes): strip them and read the same pixels."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(stores["synthetic"], old)
    for gdir in _group_dirs(str(old)):
        doc = json.loads((gdir / "zarr.json").read_text())
        doc["attributes"] = {
            k: v for k, v in doc["attributes"].items() if k != "zarr_conventions" and ":" not in k
        }
        (gdir / "zarr.json").write_text(json.dumps(doc))
    new_store, old_store = CubeStore.open(stores["synthetic"]), CubeStore.open(str(old))
    (tile_id,) = old_store.complete_tiles()
    for key in old_store.groups(tile_id):
        a = new_store.open_group(tile_id, *key, lazy=True)
        b = old_store.open_group(tile_id, *key, lazy=True)
        assert "proj:code" not in b.attrs and "proj:code" in a.attrs
        assert old_store.group_meta(tile_id, *key, b) == new_store.group_meta(tile_id, *key, a)
        np.testing.assert_array_equal(
            old_store.read_window(b, 1, 0, 0, 8, 8), new_store.read_window(a, 1, 0, 0, 8, 8)
        )


def _gdal_version() -> tuple[int, ...]:
    import rasterio

    return tuple(int(p) for p in rasterio.__gdal_version__.split(".")[:2])


def _unsharded_copy(gdir: Path, dst: Path, cf: bool) -> Path:
    """The group's metadata (group attributes, reflectance dims and attributes) with reflectance stored
    unsharded, for GDAL releases that read Zarr v3 but no shards (3.11, 3.12). ``cf=False`` leaves out
    the CF grid mapping and the x/y arrays: only the group's proj:/spatial: attributes georeference it."""
    src = zarr.open_group(gdir, mode="r", zarr_format=3)
    out = zarr.open_group(dst, mode="w", zarr_format=3, attributes=dict(src.attrs))
    names = ["reflectance", "x", "y", "spatial_ref"] if cf else ["reflectance"]
    for name in names:
        arr = src[name]
        assert isinstance(arr, zarr.Array)
        attrs = {k: v for k, v in arr.attrs.items() if k != "coordinates" and (cf or k != "grid_mapping")}
        new = out.create_array(
            name,
            shape=arr.shape,
            dtype=arr.dtype,
            chunks=tuple(arr.shape),
            fill_value=arr.fill_value,
            compressors=None,
            dimension_names=getattr(arr.metadata, "dimension_names", None),
            attributes=attrs,
        )
        new[...] = arr[...]
    return dst


@pytest.mark.parametrize("cf", [True, False], ids=["cf-grid-mapping", "conventions-only"])
def test_gdal_reads_the_crs_and_geotransform_of_a_cube_array(
    stores: dict[str, str], tmp_path: Path, cf: bool
) -> None:
    """GDAL (through rasterio, ``ZARR:"<group>":/reflectance``) georeferences a cube group as xarray does.
    GDAL reads Zarr v3 as zarr-python writes it from 3.11, shards and the proj:/spatial: conventions
    from 3.13: before 3.13 the group is checked on an unsharded copy of its metadata, through its CF
    grid mapping; from 3.13 as stored, and the copy without CF metadata through the conventions alone."""
    import rasterio

    have = _gdal_version()
    need = (3, 11) if cf else (3, 13)
    if have < need:
        pytest.skip(f"GDAL {rasterio.__gdal_version__} < {'.'.join(map(str, need))} (rasterio's GDAL)")
    gdir = _group_dirs(stores["production"])[0]
    attrs = json.loads((gdir / "zarr.json").read_text())["attributes"]
    targets = [_unsharded_copy(gdir, tmp_path / "copy", cf)]
    if have >= (3, 13) and cf:
        targets.append(gdir)  # the stored, sharded group itself
    for target in targets:
        with rasterio.open(f'ZARR:"{target}":/reflectance') as src:
            assert src.crs is not None and src.crs.to_epsg() == 32631, target
            assert list(src.transform)[:6] == attrs["spatial:transform"], target
            assert (src.height, src.width) == tuple(attrs["spatial:shape"]), target


def _docs_open_snippet(group_url: str) -> str:
    """The first statements of docs/cubes.md's "Opening" snippet, up to the float32 cast, with the
    example URL replaced by ``group_url`` and ``storage_options={...}`` by None."""
    import ast
    import re

    doc = (Path(__file__).resolve().parents[3] / "docs" / "cubes.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "xr.open_zarr(" in b)
    tree = ast.parse(block)
    casts = [i for i, n in enumerate(tree.body) if "astype" in ast.unparse(n)]
    assert casts, "docs/cubes.md opens reflectance with xr.open_zarr and does not cast it to float32"
    end = casts[0]

    class Local(ast.NodeTransformer):
        def visit_Constant(self, node: ast.Constant) -> ast.AST:
            return ast.Constant(group_url) if str(node.value).startswith("s3://bucket/cubes/") else node

        def visit_keyword(self, node: ast.keyword) -> ast.AST:
            return (
                ast.keyword("storage_options", ast.Constant(None)) if node.arg == "storage_options" else node
            )

    body = [Local().visit(n) for n in tree.body[: end + 1]]
    return ast.unparse(ast.fix_missing_locations(ast.Module(body, type_ignores=[])))


def test_the_documented_plain_xarray_open_gives_float32_reflectance(stores: dict[str, str]) -> None:
    """docs/cubes.md's snippet, run (warnings are errors): it said "decodes to float reflectance" and
    xarray gave float64 (the JSON ``scale_factor`` is a Python float), double the memory. The snippet
    now casts lazily; the values are CubeStore's float32."""
    gdir = next(d for d in _group_dirs(stores["synthetic"]) if d.name == "10m")
    code = _docs_open_snippet(str(gdir))
    assert "consolidated=True" in code and "astype('float32')" in code
    ns: dict[str, Any] = {}
    exec(compile(code, "docs/cubes.md", "exec"), ns)
    ds = ns["ds"]
    assert ds["reflectance"].dtype == np.float32 and ds["reflectance"].chunks is not None  # still lazy
    assert xr.open_zarr(gdir, consolidated=True)["reflectance"].dtype == np.float64  # why the cast
    tile_id, coll = gdir.parent.parent.name, gdir.parent.name
    ref = CubeStore.open(stores["synthetic"]).open_group(tile_id, coll, "10m")["reflectance"]
    assert ref.dtype == np.float32
    np.testing.assert_array_equal(ds["reflectance"].values, ref.values)
    assert np.isnan(ref.values).any()  # the fill value decodes to NaN on both paths

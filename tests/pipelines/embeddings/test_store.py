"""The embeddings store format: quantisation, templates, tile writes, completion records, STAC."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from pipelines.embeddings import (
    NODATA_Q,
    QUANT_MAX_ABS_ERROR,
    EmbeddingsStoreError,
    EmbeddingsVersion,
    ZoneGrid,
    create_version,
    dequantize,
    ensure_zone,
    list_complete_tiles,
    list_versions,
    quantisation_error,
    quantize,
    read_tile_record,
    tile_is_complete,
    unit,
    write_stac,
    write_tile,
)
from pipelines.testing import SyntheticScene, synthetic_version
from pipelines.tiling import TileGrid

PROV = {"input_items": ["S2A_test"], "bands": [{"name": "B04", "gsd_m": 10.0}]}
GRID = TileGrid(7680.0)
TILE = GRID.tile_at(5.99, 45.0)  # EPSG:32631


def _version(**kw) -> EmbeddingsVersion:
    return synthetic_version(**{"dim": 16, "times": ("2024-06-01", "2024-07-01"), **kw})


# ------------------------------------------------------------------ quantisation


@pytest.mark.parametrize("dim", [8, 64, 128])
def test_quantisation_round_trip_within_documented_bound(dim: int) -> None:
    rng = np.random.default_rng(dim)
    cases = [
        rng.standard_normal((4000, dim)) * 3.0,
        rng.standard_t(1.5, (2000, dim)),  # heavy tails: a few huge components
        np.eye(dim)[rng.integers(0, dim, 500)] * rng.uniform(0.1, 50, (500, 1)),  # one-hot
        rng.standard_normal((1000, dim)) * (rng.random((1000, dim)) < 0.1),  # sparse
    ]
    for x in cases:
        x = x[np.linalg.norm(x, axis=1) > 0].astype(np.float32)
        q = quantize(x)
        assert q.dtype == np.int8
        assert q.min() >= -127  # -128 is reserved for nodata
        u = unit(x)
        v = dequantize(q)
        err = np.abs(v - u)
        assert err.max() <= QUANT_MAX_ABS_ERROR + 1e-6
        # the tighter per-component bound (sqrt|u| + sqrt|v|) / 254
        assert np.all(err <= (np.sqrt(np.abs(u)) + np.sqrt(np.abs(v))) / 254 + 1e-6)
        cos = np.sum(unit(v) * u, axis=1)
        assert cos.min() > 0.999
    stats = quantisation_error(rng.standard_normal((5000, dim)))
    assert stats["max_abs_error"] is not None and stats["max_abs_error"] <= QUANT_MAX_ABS_ERROR
    assert stats["mean_abs_error"] is not None and stats["mean_abs_error"] < 0.003


def test_quantisation_nodata_and_special_values() -> None:
    x = np.array([[np.nan, 1.0, 2.0], [0.0, 0.0, 0.0], [1.0, -1.0, 0.0], [np.inf, 0, 0]], np.float32)
    q = quantize(x)
    assert (q[0] == NODATA_Q).all() and (q[3] == NODATA_Q).all()
    assert (q[1] == 0).all()
    v = dequantize(q)
    assert np.isnan(v[0]).all() and np.isnan(v[3]).all()
    np.testing.assert_allclose(v[2], [0.5**0.5, -(0.5**0.5), 0.0], atol=QUANT_MAX_ABS_ERROR)
    # the documented inverse, written out independently
    codes = np.arange(-127, 128, dtype=np.int8)
    np.testing.assert_allclose(dequantize(codes), np.sign(codes) * (codes / 127.0) ** 2, rtol=1e-6)


# ------------------------------------------------------------------ versions and zones


def test_create_version_idempotent_and_refuses_other_definition(tmp_path: Path) -> None:
    root = str(tmp_path / "emb")
    v = _version()
    create_version(root, v)
    create_version(root, v)  # same definition: no-op
    assert [x.name for x in list_versions(root)] == [v.name]
    with pytest.raises(EmbeddingsStoreError, match=r"different definition \(differs in: dim\)"):
        create_version(root, _version(dim=32))
    other = _version(name="aom-other-aaaaaaaaaaaa")
    create_version(root, other)
    assert [x.name for x in list_versions(root)] == sorted([v.name, other.name])
    with pytest.raises(EmbeddingsStoreError, match="whole multiple"):
        _version(token_ground_m=70.0)
    with pytest.raises(EmbeddingsStoreError, match="config must be strict JSON"):
        _version(config={"x": float("nan")})
    with pytest.raises(EmbeddingsStoreError, match="invalid version name"):
        _version(name="_tiles")


def test_ensure_zone_concurrent_writers_write_identical_bytes(tmp_path: Path) -> None:
    v = _version()
    roots = [str(tmp_path / "a"), str(tmp_path / "b")]
    for r in roots:
        create_version(r, v)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            ensure_zone(roots[0], v.name, 32631)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ensure_zone(roots[1], v.name, 32631)
    ensure_zone(roots[1], v.name, 32631)  # idempotent
    files_a = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / v.name / "32631").rglob("*") if p.is_file()
    )
    files_b = sorted(
        p.relative_to(tmp_path / "b") for p in (tmp_path / "b" / v.name / "32631").rglob("*") if p.is_file()
    )
    assert files_a == files_b and files_a
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    meta = json.loads((tmp_path / "a" / v.name / "32631" / "embeddings" / "zarr.json").read_text())
    assert meta["shape"][1] == v.dim and meta["fill_value"] == NODATA_Q
    assert meta["dimension_names"] == ["time", "dim", "y", "x"]  # format 2: band-first
    n = v.tokens_per_tile
    assert meta["codecs"][0]["name"] == "sharding_indexed"
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [1, v.dim, n, n]
    with pytest.raises(EmbeddingsStoreError, match="not a WGS 84 / UTM zone"):
        ensure_zone(roots[0], v.name, 4326)


class _Killed(BaseException):
    """The run dies here (SIGKILL: nothing after this point of the run happens)."""


def _kill_on_first_write(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """The first value write to the array at ``path`` kills the run (after the array's metadata was
    created, before its values are written: what a SIGKILL between the two leaves)."""
    setitem = zarr.Array.__setitem__

    def killer(self: zarr.Array, key: Any, value: Any) -> None:
        if self.path == path:
            raise _Killed(path)
        setitem(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", killer)


def _coords(group: zarr.Group, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for n in names:
        array = group[n]
        assert isinstance(array, zarr.Array), f"{n} is not an array"
        out[n] = np.asarray(array[...])
    return out


@pytest.mark.parametrize("name", ["x", "y", "tile_x", "tile_y", "time"])
def test_a_run_killed_between_a_coordinate_and_its_values_is_repaired_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """A run killed after a zone coordinate array was created and before its values were written
    left it at its fill value (``x`` all 0.0: ``aom query export`` wrote a COG without CRS or
    transform); the next run found the array and never wrote it. Now every ensure_zone repairs it."""
    from pipelines.embeddings import ensure_tile_group
    from pipelines.embeddings.store import _open_group

    v = _version()
    clean, killed = str(tmp_path / "clean"), str(tmp_path / "killed")
    for r in (clean, killed):
        create_version(r, v)
    ensure_zone(clean, v.name, 32631)
    ensure_tile_group(clean, v.name, 32631, None)
    zone_names = ("x", "y", "tile_x", "tile_y", "time")
    want = _coords(_open_group(clean, f"{v.name}/32631", None, "r"), zone_names)
    assert want["x"].any() and want["time"].any()

    with monkeypatch.context() as m:
        _kill_on_first_write(m, f"{v.name}/32631/{name}")
        with pytest.raises(_Killed):
            ensure_zone(killed, v.name, 32631)
    ensure_zone(killed, v.name, 32631)  # the rerun
    got = _coords(_open_group(killed, f"{v.name}/32631", None, "r"), zone_names)
    for n in zone_names:
        np.testing.assert_array_equal(got[n], want[n], err_msg=n)

    if name in (
        "tile_x",
        "tile_y",
        "time",
    ):  # the tile-vector grid's coordinates (format 3): the same pattern
        tile_names = ("tile_x", "tile_y", "time")
        tiles_want = _coords(_open_group(clean, f"{v.name}/32631/tiles", None, "r"), tile_names)
        with monkeypatch.context() as m:
            _kill_on_first_write(m, f"{v.name}/32631/tiles/{name}")
            with pytest.raises(_Killed):
                ensure_tile_group(killed, v.name, 32631, None)
        ensure_tile_group(killed, v.name, 32631, None)
        tiles_got = _coords(_open_group(killed, f"{v.name}/32631/tiles", None, "r"), tile_names)
        for n in tile_names:
            np.testing.assert_array_equal(tiles_got[n], tiles_want[n], err_msg=f"tiles/{n}")


# ------------------------------------------------------------------ tiles


def test_a_completion_record_keeps_no_credential(tmp_path: Path) -> None:
    """write_tile wrote the provenance as given: a source URL or note naming a signed or keyed URL
    reached the record (and from there STAC links). Every string now goes through the one list."""
    canary = "c4n4ry-S3CR3T"
    root = str(tmp_path / "emb")
    v = _version()
    create_version(root, v)
    emb, _ = SyntheticScene(dim=v.dim).tile_arrays(TILE, v.token_ground_m, 0)
    prov = {
        **PROV,
        "source": f"catalog:https://api.example.org/stac?api_key={canary}",
        "notes": [f"GET https://h/x.tif?X-Goog-Signature={canary}&key={canary} -> 403"],
    }
    rec = write_tile(root, v.name, TILE, 0, emb, None, prov)
    assert rec["provenance"]["source"] == "catalog:https://api.example.org/stac?api_key=***"
    assert rec["provenance"]["input_items"] == ["S2A_test"]
    stored = read_tile_record(root, v.name, TILE.tile_id, 0)
    assert canary not in json.dumps(stored) and stored["provenance"] == rec["provenance"]


def test_write_tile_round_trip_record_and_xarray_view(tmp_path: Path) -> None:
    import odc.geo.xr  # noqa: F401  (registers .odc)
    import xarray as xr

    from pipelines.embeddings import zarr_store

    root = str(tmp_path / "emb")
    v = _version()
    create_version(root, v)
    scene = SyntheticScene(dim=v.dim)
    emb, _ = scene.tile_arrays(TILE, v.token_ground_m, 0, hole_tokens=4)
    assert not tile_is_complete(root, v.name, TILE.tile_id, 0)
    rec = write_tile(root, v.name, TILE, 0, emb, None, PROV)
    assert rec["status"] == "complete" and rec["valid_tokens"] == emb.shape[0] ** 2 - 16
    assert rec["provenance"]["checkpoint_sha256"] == v.checkpoint_sha256
    assert rec["provenance"]["input_items"] == ["S2A_test"]
    assert rec["quantisation"]["max_abs_error"] <= QUANT_MAX_ABS_ERROR
    json.dumps(rec, allow_nan=False)  # strict JSON, no NaN
    assert tile_is_complete(root, v.name, TILE.tile_id, 0)
    assert not tile_is_complete(root, v.name, TILE.tile_id, 1)
    assert list_complete_tiles(root, v.name) == {0: [TILE.tile_id]}

    ds = xr.open_zarr(
        zarr_store(root, read_only=True), group=f"{v.name}/32631", consolidated=False, chunks=None
    )
    gb = ds.embeddings.odc.geobox
    assert gb.crs.epsg == 32631
    assert ds.time.values[0] == np.datetime64("2024-06-01")
    r0, r1, c0, c1 = rec["window"]["row"] + rec["window"]["col"]
    # the tile's north-west token centre sits half a token inside its top-left corner
    assert float(ds.x[c0]) == TILE.bounds[0] + v.token_ground_m / 2
    assert float(ds.y[r0]) == TILE.bounds[3] - v.token_ground_m / 2
    codes = ds.embeddings.isel(time=0, y=slice(r0, r1), x=slice(c0, c1)).transpose("y", "x", "dim").values
    np.testing.assert_array_equal(codes, quantize(emb))
    assert (codes[:4, :4] == NODATA_Q).all()
    tr, tc = rec["window"]["tile_row"], rec["window"]["tile_col"]
    pooled = (
        ds.pooled.isel(time=0, tile_y=slice(tr, tr + 2), tile_x=slice(tc, tc + 1))
        .transpose("tile_y", "tile_x", "dim")
        .values
    )  # 1 chunk per tile
    assert np.isfinite(pooled[0, 0]).all() and np.isnan(pooled[1, 0]).all()


def test_write_tile_rejects_bad_input(tmp_path: Path) -> None:
    root = str(tmp_path / "emb")
    v = _version()
    create_version(root, v)
    n = v.tokens_per_tile
    good = np.zeros((n, n, v.dim), np.float32) + 1
    with pytest.raises(EmbeddingsStoreError, match=r"expected \(96, 96, 16\)"):
        write_tile(root, v.name, TILE, 0, good[:-1], None, PROV)
    with pytest.raises(EmbeddingsStoreError, match=r"valid 0\.\.1"):
        write_tile(root, v.name, TILE, 2, good, None, PROV)
    with pytest.raises(EmbeddingsStoreError, match="lacks"):
        write_tile(root, v.name, TILE, 0, good, None, {"bands": []})
    with pytest.raises(EmbeddingsStoreError, match="tile_size_m"):
        write_tile(root, v.name, TileGrid(3840.0).tile_at(5.99, 45.0), 0, good, None, PROV)
    with pytest.raises(EmbeddingsStoreError, match="unknown embeddings version 'nope'"):
        write_tile(root, "nope", TILE, 0, good, None, PROV)
    grid = ZoneGrid(32631, v.token_ground_m, v.tile_size_m)
    with pytest.raises(EmbeddingsStoreError, match="not on the"):
        grid.tile_window((100.0, 0.0, 7780.0, 7680.0))


def test_nodata_tile_and_float16_version(tmp_path: Path) -> None:
    root = str(tmp_path / "emb")
    v = _version(name="aom-f16-000000000000", quantisation="float16")
    create_version(root, v)
    n = v.tokens_per_tile
    rec = write_tile(root, v.name, TILE, 1, np.full((n, n, v.dim), np.nan, np.float32), None, PROV)
    assert rec["status"] == "nodata" and rec["quantisation"]["max_abs_error"] is None
    assert tile_is_complete(root, v.name, TILE.tile_id, 1)
    x = np.random.default_rng(0).standard_normal((n, n, v.dim)).astype(np.float32)
    rec = write_tile(root, v.name, TILE, 0, x, np.ones(v.dim), PROV)
    assert rec["quantisation"]["max_abs_error"] < 3e-3  # float16 keeps the raw values


def test_stac_parses_with_pystac(tmp_path: Path) -> None:
    import pystac

    root = tmp_path / "emb"
    v = _version()
    create_version(str(root), v)
    scene = SyntheticScene(dim=v.dim)
    tiles = GRID.tiles_for_bbox((5.98, 44.99, 6.02, 45.01))
    for t in tiles:
        write_tile(str(root), v.name, t, 0, scene.tile_arrays(t, v.token_ground_m)[0], None, PROV)
    n = v.tokens_per_tile
    write_tile(str(root), v.name, tiles[0], 1, np.full((n, n, v.dim), np.nan, np.float32), None, PROV)
    url = write_stac(str(root), v.name)
    coll = pystac.Collection.from_file(url)
    assert coll.id == v.name
    assert "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json" in coll.stac_extensions
    assert coll.extra_fields["emb:dimensions"] == v.dim
    items = list(coll.get_items(recursive=True))
    assert sorted(i.id for i in items) == sorted(t.tile_id for t in tiles)
    for item in items:
        again = pystac.Item.from_file(str(root / "stac" / "items" / v.name / f"{item.id}.json"))
        asset = again.assets["embeddings"]
        assert "embeddings" in (asset.roles or [])
        assert asset.media_type == "application/vnd.zarr; version=3"
        assert Path(asset.get_absolute_href() or "").joinpath("embeddings", "zarr.json").exists()
        assert again.properties["emb:quantization"]["method"] == "int8-sqrt"
        assert again.properties["proj:code"] == f"EPSG:{item.id.split('_')[0]}"
        assert again.datetime is not None and again.datetime.date().isoformat() == "2024-06-01"
        w, s, e, n_ = again.bbox or []
        assert 5.8 < w < e < 6.3 and 44.9 < s < n_ < 45.1

"""`aom embed-raster`: any GeoTIFF -> a georeferenced embedding raster on the token grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines import embeddings as es
from pipelines.embed import EmbedConfigError, chip_plan, embed_raster

BANDS = ("B02", "B03", "B04", "B08")


def _checkpoint(path: Path, **overrides: Any) -> Path:
    import torch

    from aom_model import AOM, AOMConfig, save_checkpoint

    torch.manual_seed(3)
    save_checkpoint(path, AOM(AOMConfig.named("tiny", **overrides)).eval())
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("raster-ckpt") / "tiny.safetensors")


@pytest.fixture(scope="module")
def geotiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 bands of uint16 DN (scale 1e-4 in the file's tags), 10 m, 400 x 520 px, a nodata corner."""
    import rasterio
    from rasterio.transform import from_origin

    path = tmp_path_factory.mktemp("raster") / "scene.tif"
    h, w = 400, 520
    yy, xx = np.mgrid[0:h, 0:w]
    data = np.stack(
        [
            (800 + 300 * b + 400 * np.sin(xx / 37.0 + b) * np.cos(yy / 53.0)).astype(np.uint16)
            for b in range(4)
        ]
    )
    data[:, :90, :120] = 0  # nodata
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=h,
        width=w,
        count=4,
        dtype="uint16",
        crs="EPSG:32632",
        transform=from_origin(300000.0, 5000000.0, 10.0, 10.0),
        nodata=0,
        tiled=True,
        blockxsize=128,
        blockysize=128,
    ) as dst:
        dst.write(data)
        dst.scales = (1e-4,) * 4
    return path


def test_geotiff_float32_is_georeferenced_and_equals_direct_encoder(
    tmp_path: Path, geotiff: Path, ckpt: Path
) -> None:
    import rasterio
    import torch

    from aom_model import BandBatch
    from pipelines.embed import load_checkpoint_url
    from pipelines.registry import load_registry

    out = tmp_path / "emb.tif"
    res = embed_raster(
        str(geotiff),
        str(out),
        str(ckpt),
        sensor="sentinel-2-msi",
        bands=BANDS,
        core_tokens=12,
        margin_tokens=2,
        blend_tokens=0,  # cores only: each token is one chip's (blending: tests/pipelines/embed/test_layout.py)
        progress=False,
    )
    assert (res.height, res.width, res.dim, res.token_px) == (25, 33, 64, 16)
    assert res.chip["blend_tokens"] == 0 and res.chip["pad_tokens"] == 2 and res.chips == 9
    with rasterio.open(out) as src:
        assert src.count == 64 and (src.height, src.width) == (25, 33) and src.crs.to_epsg() == 32632
        assert tuple(src.transform)[:6] == (160.0, 0.0, 300000.0, 0.0, -160.0, 5000000.0)
        emb = np.moveaxis(src.read(), 0, -1)
        assert "AOM_ENCODING" in src.tags()
        assert json.loads(src.tags()["AOM_CHIP"]) == res.chip  # the layout is recorded with the output
    assert np.isnan(emb[:5, :7]).all()  # the nodata corner (90 x 120 px = 5.6 x 7.5 tokens)
    assert np.isfinite(emb[10:, 10:]).all() and res.valid_tokens == int(np.isfinite(emb).all(-1).sum())

    # direct encoder call on the same padded pixels: chip (0, 1) = token rows -2..14, cols 10..26
    ckpt_l = load_checkpoint_url(str(ckpt))
    with rasterio.open(geotiff) as src:
        px = src.read(
            window=((-2 * 16, 14 * 16), (10 * 16, 26 * 16)), boundless=True, masked=True, out_dtype="float32"
        )
    x = np.ma.filled(px, np.nan).astype(np.float32) * np.float32(1e-4)
    s2 = load_registry().sensor("sentinel-2-msi")
    bb = BandBatch.from_tensor(
        torch.from_numpy(x)[None],
        [s2.band(b).center_wavelength_nm for b in BANDS],
        [s2.band(b).fwhm_nm for b in BANDS],
        10.0,
    )
    torch.set_num_threads(1)
    with torch.inference_mode():
        enc = ckpt_l.model.forward_features(bb, chip_plan(ckpt_l.config, [10.0], 16, 160.0))
    tok = enc.tokens[0].reshape(16, 16, -1).numpy()[2:14, 2:14]
    np.testing.assert_allclose(emb[0:12, 12:24], tok, rtol=1e-4, atol=1e-4)


def test_int8_geotiff_and_zarr_outputs(tmp_path: Path, geotiff: Path, ckpt: Path) -> None:
    import rasterio
    import xarray as xr

    f32 = tmp_path / "f.tif"
    embed_raster(str(geotiff), str(f32), str(ckpt), sensor="sentinel-2-msi", bands=BANDS, progress=False)
    i8 = tmp_path / "q.tif"
    embed_raster(
        str(geotiff), str(i8), str(ckpt), sensor="sentinel-2-msi", bands=BANDS, dtype="int8", progress=False
    )
    from pipelines.embeddings.metadata import cog_encoding
    from pipelines.testing import synthetic_version
    from pipelines.testing.cog import cog_problems, main_ifd_offset

    for path in (f32, i8):  # real COGs: main IFD at the start, tiled, overviews (rio-cogeo + layout)
        assert cog_problems(path) == [], path
        assert main_ifd_offset(path) < 1024
    with rasterio.open(f32) as a, rasterio.open(i8) as b:
        ref = np.moveaxis(a.read(), 0, -1)
        q = np.moveaxis(b.read(), 0, -1)
        assert b.dtypes[0] == "int8" and b.nodata == -128
        # the embedding COG of aom publish and aom query export: same band names, same decoding rule
        # (the int8 rule once read "int8-sqrt: unit vector component v = ...", publish's "int8-sqrt: v = ...")
        publish_rule = cog_encoding(synthetic_version(), "int8-sqrt").rule
        for ds, rule in ((a, "float32 token vectors; NaN is nodata"), (b, publish_rule)):
            assert ds.descriptions == tuple(f"emb_{i:04d}" for i in range(ds.count))
            assert ds.tags()["AOM_EMBEDDINGS"] == "1" and ds.tags()["AOM_ENCODING"] == rule
    back = es.dequantize(q)
    ok = np.isfinite(ref).all(-1)
    assert np.array_equal(ok, np.isfinite(back).all(-1))
    assert np.abs(back[ok] - es.unit(ref[ok])).max() <= es.QUANT_MAX_ABS_ERROR + 1e-6

    zout = tmp_path / "emb.zarr"
    res = embed_raster(
        str(geotiff),
        str(zout),
        str(ckpt),
        wavelengths=[492.4, 559.8, 664.6, 832.8],
        fwhm=[66, 36, 31, 106],
        progress=False,
    )
    import odc.geo.xr  # noqa: F401  (registers .odc)
    import rioxarray  # noqa: F401  (registers .rio)

    ds = xr.open_zarr(zout)  # default arguments (no warning): the CRS must still come through
    assert ds["embeddings"].dims == ("dim", "y", "x") and ds["embeddings"].shape == (
        64,
        res.height,
        res.width,
    )
    assert "spatial_ref" in ds.coords and "spatial_ref" not in ds.data_vars
    assert ds.rio.crs.to_epsg() == 32632 and ds["embeddings"].rio.count == 64
    assert ds["embeddings"].odc.geobox.crs.epsg == 32632
    assert ds["embeddings"].odc.geobox.resolution.x == 160.0
    assert float(ds["x"][0]) == 300080.0 and float(ds["y"][0]) == 4999920.0
    assert "GeoTransform" in ds["spatial_ref"].attrs and "UTM zone 32N" in ds["spatial_ref"].attrs["crs_wkt"]
    # same bands by wavelength as by registry name: the same vectors
    np.testing.assert_allclose(ds["embeddings"].transpose("y", "x", "dim").values, ref, rtol=1e-4, atol=1e-4)
    from pipelines.testing.schemas import ZARR_PROJ_SCHEMA, ZARR_SPATIAL_SCHEMA, SchemaSet

    schemas = SchemaSet.find()
    if schemas is not None:
        node = json.loads((zout / "zarr.json").read_text())
        assert (
            schemas.errors(node, ZARR_PROJ_SCHEMA) == [] and schemas.errors(node, ZARR_SPATIAL_SCHEMA) == []
        )


def test_bad_raster_requests_fail_clearly(tmp_path: Path, geotiff: Path, ckpt: Path) -> None:
    with pytest.raises(EmbedConfigError, match="4 band"):
        embed_raster(
            str(geotiff),
            str(tmp_path / "a.tif"),
            str(ckpt),
            sensor="sentinel-2-msi",
            bands=BANDS[:3],
            progress=False,
        )
    with pytest.raises(EmbedConfigError, match="no band 'B99'"):
        embed_raster(
            str(geotiff),
            str(tmp_path / "a.tif"),
            str(ckpt),
            sensor="sentinel-2-msi",
            bands=("B02", "B03", "B04", "B99"),
            progress=False,
        )
    with pytest.raises(EmbedConfigError, match="band metadata needed"):
        embed_raster(str(geotiff), str(tmp_path / "a.tif"), str(ckpt), progress=False)
    small = _checkpoint(tmp_path / "p8.safetensors", patch_size_max=8)
    with pytest.raises(EmbedConfigError, match="patch range"):
        embed_raster(
            str(geotiff),
            str(tmp_path / "a.tif"),
            str(small),
            sensor="sentinel-2-msi",
            bands=BANDS,
            progress=False,
        )
    assert not (tmp_path / "a.tif").exists()


def _cli_embed_raster(geotiff: Path, ckpt: Path, out: Path, *extra: str) -> Any:
    """``aom embed-raster`` on the fixture raster with its registry bands (+ ``extra`` options)."""
    from typer.testing import CliRunner

    from flows.cli import app

    args = ["embed-raster", str(geotiff), "--sensor", "sentinel-2-msi", "--bands", ",".join(BANDS)]
    return CliRunner().invoke(app, [*args, "--checkpoint", str(ckpt), "--out", str(out), *extra])


def test_cli_embed_raster(tmp_path: Path, geotiff: Path, ckpt: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    out = tmp_path / "cli.tif"
    res = _cli_embed_raster(geotiff, ckpt, out, "--dtype", "int8", "--no-progress")
    assert res.exit_code == 0, res.output
    assert out.exists() and "25x33 tokens x 64 dims" in res.output
    res = CliRunner().invoke(
        app, ["embed-raster", str(geotiff), "--checkpoint", str(ckpt), "--out", str(out)]
    )
    assert res.exit_code == 2 and "band metadata needed" in res.output


def test_spectral_embedding_raster_has_one_layout_for_any_bands(
    tmp_path: Path, geotiff: Path, ckpt: Path
) -> None:
    """``--embedding spectral``: 12 x band width values per token whatever bands the raster has,
    recorded in the AOM_EMBEDDING tag; an unknown kind is refused naming the valid ones."""
    import rasterio

    from aom_model import SPECTRAL_QUERIES

    kw: dict[str, Any] = {
        "sensor": "sentinel-2-msi",
        "core_tokens": 12,
        "margin_tokens": 2,
        "progress": False,
    }
    res = embed_raster(
        str(geotiff), str(tmp_path / "s.tif"), str(ckpt), bands=BANDS, embedding="spectral", **kw
    )
    assert res.dim == len(SPECTRAL_QUERIES) * 64 and res.embedding["kind"] == "spectral"
    with rasterio.open(tmp_path / "s.tif") as src:
        assert src.count == res.dim
        tag = json.loads(src.tags()["AOM_EMBEDDING"])
        assert tag["dim"] == res.dim and len(tag["queries"]) == len(SPECTRAL_QUERIES)
        full = np.moveaxis(src.read(), 0, -1)
    # a raster of 2 of the 4 bands: the same layout, other values
    two = tmp_path / "two.tif"
    with rasterio.open(geotiff) as src:
        prof = src.profile | {"count": 2}
        data, scales = src.read([1, 4]), src.scales
    with rasterio.open(two, "w", **prof) as dst:
        dst.write(data)
        dst.scales = (scales[0], scales[3])
    res2 = embed_raster(
        str(two), str(tmp_path / "s2.tif"), str(ckpt), bands=("B02", "B08"), embedding="spectral", **kw
    )
    assert res2.dim == res.dim
    with rasterio.open(tmp_path / "s2.tif") as src:
        part = np.moveaxis(src.read(), 0, -1)
    ok = np.isfinite(full).all(-1) & np.isfinite(part).all(-1)
    assert ok.sum() > 100 and not np.allclose(full[ok], part[ok], atol=1e-3)
    bad = _cli_embed_raster(geotiff, ckpt, tmp_path / "x.tif", "--embedding", "pooled")
    assert bad.exit_code == 2 and "position, spectral" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "x.tif").exists()


@pytest.mark.parametrize("token_m", [40.0, 80.0, 160.0, 320.0])
def test_every_token_size_in_range_runs_and_its_grid_is_right(
    tmp_path: Path, geotiff: Path, ckpt: Path, token_m: float
) -> None:
    """One checkpoint (tiny: 40-320 m) serves every --token-m in its range: k = token_m / 10 m px per
    token, ceil(400 / k) x ceil(520 / k) tokens, the transform scaled by k, recorded in the tags."""
    import math

    import rasterio

    out = tmp_path / f"emb{token_m:g}.tif"
    res = embed_raster(
        str(geotiff),
        str(out),
        str(ckpt),
        sensor="sentinel-2-msi",
        bands=BANDS,
        token_m=token_m,
        progress=False,
    )
    k = round(token_m / 10.0)
    assert (res.token_px, res.token_m) == (k, token_m)
    assert (res.height, res.width) == (math.ceil(400 / k), math.ceil(520 / k))
    with rasterio.open(out) as src:
        assert (src.height, src.width) == (res.height, res.width)
        assert tuple(src.transform)[:6] == (token_m, 0.0, 300000.0, 0.0, -token_m, 5000000.0)
        assert src.tags()["AOM_TOKEN_M"] == f"{token_m:g}"
        emb = np.moveaxis(src.read(), 0, -1)
    assert np.isfinite(emb[-2, -2]).all() and res.valid_tokens > 0  # a whole token inside the raster


def test_token_size_outside_the_checkpoints_range_is_refused(
    tmp_path: Path, geotiff: Path, ckpt: Path
) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    with pytest.raises(
        EmbedConfigError, match=r"token size 20 m is outside the checkpoint's supported range: 40 to 320 m"
    ):
        embed_raster(
            str(geotiff),
            str(tmp_path / "a.tif"),
            str(ckpt),
            sensor="sentinel-2-msi",
            bands=BANDS,
            token_m=20.0,
        )
    args = ["embed-raster", str(geotiff), "--sensor", "sentinel-2-msi", "--bands", ",".join(BANDS)]
    res = CliRunner().invoke(
        app, [*args, "--checkpoint", str(ckpt), "--out", str(tmp_path / "b.tif"), "--token-m", "640"]
    )
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines == [
        f"error: {ckpt}: token size 640 m is outside the checkpoint's supported range: 40 to 320 m"
    ]
    assert not (tmp_path / "a.tif").exists() and not (tmp_path / "b.tif").exists()


def test_overwrite_of_a_zarr_output_another_run_is_writing_removes_nothing(
    tmp_path: Path, geotiff: Path, ckpt: Path
) -> None:
    """`embed-raster --overwrite` while another run wrote the same Zarr --out removed the store's
    nodes before taking the lease, then exited 1; the other run then marked the hollow store complete.
    Now it is refused (exit 1, one line) and the store is untouched."""
    from typer.testing import CliRunner

    from flows.cli import app
    from pipelines.embed import check_raster_complete
    from tests.pipelines.outputs.support import live_lease_of_another_run

    out = tmp_path / "r.zarr"
    embed_raster(str(geotiff), str(out), str(ckpt), sensor="sentinel-2-msi", bands=BANDS, progress=False)
    live_lease_of_another_run(out / "_leases" / "writer.json")  # the other run, writing now
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    args = ["embed-raster", str(geotiff), "--sensor", "sentinel-2-msi", "--bands", ",".join(BANDS)]
    res = CliRunner().invoke(app, [*args, "--checkpoint", str(ckpt), "--out", str(out), "--overwrite"])
    assert res.exit_code == 1, res.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert "being written by another run otherrun" in res.output and "nothing was removed" in res.output
    assert check_raster_complete(str(out))["aom_complete"] is True


def _scene(path: Path, px_m: float, size: int = 48) -> Path:
    """A small 4-band uint16 raster with ``px_m`` m pixels."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    data = rng.integers(500, 3000, size=(4, size, size), dtype=np.uint16)
    profile = {"driver": "GTiff", "height": size, "width": size, "count": 4, "dtype": "uint16"}
    profile |= {"crs": "EPSG:32632", "transform": from_origin(300000.0, 5000000.0, px_m, px_m), "nodata": 0}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_pixels_coarser_than_the_largest_token_are_refused_like_a_token_size_outside_the_range(
    tmp_path: Path, ckpt: Path
) -> None:
    """4633 m MODIS pixels ran at 1 px = 4633 m per token with a 40-320 m checkpoint, though
    `--token-m 4633` is refused: now the same exit 2 and one line naming the range and why."""
    from typer.testing import CliRunner

    from flows.cli import app

    coarse = _scene(tmp_path / "coarse.tif", 463.3)
    out = tmp_path / "x.tif"
    args = ["embed-raster", str(coarse), "--sensor", "sentinel-2-msi", "--bands", ",".join(BANDS)]
    res = CliRunner().invoke(app, [*args, "--checkpoint", str(ckpt), "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines == [
        f"error: {ckpt}: token size 463.3 m (1 px) is outside the checkpoint's supported range: 40 to "
        "320 m; the raster's 463.3 m pixels are coarser than the largest token size"
    ]
    assert not out.exists()


@pytest.mark.parametrize(("px_m", "token_m", "k"), [(30.0, 40.0, 2), (213.0, 320.0, 1), (300.0, 160.0, 1)])
def test_the_realised_token_size_stays_inside_the_checkpoints_range(
    tmp_path: Path, ckpt: Path, px_m: float, token_m: float, k: int
) -> None:
    """k = round(token_m / px) gave 1 px = 30 m for --token-m 40 on 30 m pixels and 2 px = 426 m
    for --token-m 320 on 213 m pixels, both outside 40-320 m; the nearest size inside is used."""
    scene = _scene(tmp_path / "s.tif", px_m, size=24)
    res = embed_raster(
        str(scene),
        str(tmp_path / "o.tif"),
        str(ckpt),
        sensor="sentinel-2-msi",
        bands=BANDS,
        token_m=token_m,
        progress=False,
    )
    assert (res.token_px, res.token_m) == (k, k * px_m)
    assert 40.0 <= res.token_m <= 320.0


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_failed_overwrite_of_a_geotiff_keeps_the_old_file_and_a_finished_one_replaces_it(
    tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, where: str
) -> None:
    """`embed-raster --overwrite` of a GeoTIFF --out deleted the old file when it claimed the output;
    a run that then failed left no output at all. Now the new file is written under a partial name
    (remote: locally, then uploaded) and replaces the old one only once complete."""
    import pipelines.embed.raster as raster_mod

    scene = _scene(tmp_path / "scene.tif", 10.0, size=64)
    kw: dict[str, Any] = {"sensor": "sentinel-2-msi", "bands": BANDS, "progress": False}
    kw |= {"core_tokens": 2, "blend_tokens": 0}  # two strips of 2 token rows
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        out, opts = bucket.url("prefix", "emb.tif"), bucket.storage_options
        fs, key = bucket.fs, f"{bucket.name}/prefix/emb.tif"

        def read_out() -> bytes:
            fs.invalidate_cache()
            return bytes(fs.cat_file(key))

        def names() -> list[str]:
            fs.invalidate_cache()
            return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket.name}/prefix", detail=False))

    else:
        out, opts = str(tmp_path / "out" / "emb.tif"), None

        def read_out() -> bytes:
            return (tmp_path / "out" / "emb.tif").read_bytes()

        def names() -> list[str]:
            return sorted(p.name for p in (tmp_path / "out").iterdir())

    embed_raster(str(scene), out, str(ckpt), storage_options=opts, **kw)
    old = read_out()

    calls = {"n": 0}
    real = raster_mod.embed_region

    def fail_on_second_strip(*a: Any, **k: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # mid-way: the output is claimed and the first strip written
            raise RuntimeError("encoder crashed")
        return real(*a, **k)

    monkeypatch.setattr(raster_mod, "embed_region", fail_on_second_strip)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        embed_raster(str(scene), out, str(ckpt), storage_options=opts, overwrite=True, dtype="int8", **kw)
    assert calls["n"] == 2
    assert read_out() == old  # byte-identical: the failed run lost nothing
    assert names() == ["emb.tif"]  # and left no partial behind
    monkeypatch.setattr(raster_mod, "embed_region", real)

    res = embed_raster(str(scene), out, str(ckpt), storage_options=opts, overwrite=True, dtype="int8", **kw)
    new = read_out()
    assert res.dtype == "int8" and new != old
    assert names() == ["emb.tif"]


def test_a_refused_upload_of_a_geotiff_fails_the_run_and_keeps_the_old_object(
    tmp_path: Path, ckpt: Path, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finished GeoTIFF is uploaded by ``pipelines.storage.upload_file_atomic``: S3 answering 500
    is a RunFailedError naming the output (no credentials), transient as its cause; the object there
    before is unchanged and the local temporary file is removed (it used to be an s3fs OSError)."""
    import tempfile

    from pipelines import storage
    from pipelines.errors import RunFailedError
    from pipelines.retry import is_transient
    from tests.services.s3 import S3Refusal

    scene = _scene(tmp_path / "scene.tif", 10.0, size=64)
    kw: dict[str, Any] = {"sensor": "sentinel-2-msi", "bands": BANDS, "progress": False}
    out, opts = s3_bucket.url("prefix", "emb.tif"), s3_bucket.storage_options
    embed_raster(str(scene), out, str(ckpt), storage_options=opts, **kw)
    key = f"{s3_bucket.name}/prefix/emb.tif"
    old = bytes(s3_bucket.fs.cat_file(key))
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    fs = storage.filesystem(out, opts)[0]
    with (
        S3Refusal(fs, "emb.tif", 500, operation="PutObject") as refusal,
        pytest.raises(RunFailedError, match=f"upload to {out} failed") as caught,
    ):
        embed_raster(str(scene), out, str(ckpt), storage_options=opts, overwrite=True, dtype="int8", **kw)
    assert refusal.refused == 1 and is_transient(caught.value)
    assert opts["secret"] not in str(caught.value)
    s3_bucket.fs.invalidate_cache()
    assert bytes(s3_bucket.fs.cat_file(key)) == old
    assert list(temp.iterdir()) == []


def test_overwrite_never_empties_a_folder_a_geotiff_cannot_replace(tmp_path: Path, ckpt: Path) -> None:
    """An aom Zarr output named ``*.tif`` cannot be replaced by a file: `--overwrite` used to remove
    its nodes, encode, then fail at the final move. Now it is refused first (exit 2) and kept."""
    import zarr

    from pipelines.outputs import OutputError

    scene = _scene(tmp_path / "scene.tif", 10.0, size=32)
    out = tmp_path / "odd.tif"
    zarr.open_group(str(out), mode="w", zarr_format=3, attributes={"aom_embeddings": "1"})
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(OutputError, match="is a folder"):
        embed_raster(
            str(scene),
            str(out),
            str(ckpt),
            sensor="sentinel-2-msi",
            bands=BANDS,
            progress=False,
            overwrite=True,
        )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

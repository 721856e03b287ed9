"""The fault matrix of issue "nothing lost": each finding reproduced against local disk and moto S3.

Every test states the finding it reproduces; each asserts that what the user owns survives
(files, objects, prefixes, buckets), that the command exits with the documented code and one
``error:`` line, and that the result is whole. The contract is ``docs/safety.md``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app

pytest_plugins = ["tests.services.fixtures"]


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def _one_error_line(res: Any) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert "Traceback" not in res.output, res.output
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, res.output
    return errors[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from aom_model import AOM, AOMConfig, save_checkpoint

    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("fm-ckpt") / "tiny.safetensors"
    save_checkpoint(path, AOM(AOMConfig.named("tiny")).eval())
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small 4-band 10 m GeoTIFF (uint16 DN, scale 1e-4)."""
    import rasterio
    from rasterio.transform import from_origin

    path = tmp_path_factory.mktemp("fm-raster") / "scene.tif"
    rng = np.random.default_rng(0)
    data = (800 + 2000 * rng.random((4, 96, 112))).astype(np.uint16)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=96,
        width=112,
        count=4,
        dtype="uint16",
        crs="EPSG:32632",
        transform=from_origin(300000.0, 5000000.0, 10.0, 10.0),
        nodata=0,
    ) as dst:
        dst.write(data)
        dst.scales = (1e-4,) * 4
    return path


def _raster_args(scene: Path, ckpt: Path, out: str, *extra: str) -> list[str]:
    return [
        "embed-raster",
        str(scene),
        "--checkpoint",
        str(ckpt),
        "--out",
        out,
        "--sensor",
        "sentinel-2-msi",
        "--bands",
        "B02,B03,B04,B08",
        "--no-progress",
        *extra,
    ]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------
# Finding 1: embed-raster --out DIR deleted a user's folder, prefix and bucket


def test_f1_embed_raster_refuses_a_users_folder_and_keeps_it(tmp_path: Path, scene: Path, ckpt: Path) -> None:
    folder = tmp_path / "mine.zarr"
    (folder / "notes").mkdir(parents=True)
    (folder / "notes" / "a.txt").write_text("keep me")
    (folder / "b.csv").write_text("1,2\n")
    before = _tree(folder)
    for extra in ((), ("--overwrite",)):
        res = _cli(*_raster_args(scene, ckpt, str(folder), *extra))
        assert res.exit_code == 2, res.output
        assert "not written by aom" in _one_error_line(res)
    assert _tree(folder) == before


def test_f1_embed_raster_refuses_its_input_and_unknown_formats(
    tmp_path: Path, scene: Path, ckpt: Path
) -> None:
    before = scene.read_bytes()
    res = _cli(*_raster_args(scene, ckpt, str(scene)))
    assert res.exit_code == 2 and "is the input" in _one_error_line(res)
    assert scene.read_bytes() == before
    res = _cli(*_raster_args(scene, ckpt, str(tmp_path / "x.png")))
    assert res.exit_code == 2
    line = _one_error_line(res)
    assert ".tif" in line and ".zarr" in line
    assert not (tmp_path / "x.png").exists()
    holder = tmp_path / "inputs.zarr"  # a folder holding the input
    holder.mkdir()
    inner = holder / "scene.tif"
    inner.write_bytes(before)
    res = _cli(*_raster_args(inner, ckpt, str(holder)))
    assert res.exit_code == 2 and "contains the input" in _one_error_line(res)


def test_f1_embed_raster_reruns_replace_only_its_own_output(tmp_path: Path, scene: Path, ckpt: Path) -> None:
    out = tmp_path / "emb.zarr"
    assert _cli(*_raster_args(scene, ckpt, str(out))).exit_code == 0
    (out / "README.txt").write_text("a user's note inside the store")
    res = _cli(*_raster_args(scene, ckpt, str(out)))  # same kind: rerun replaces its own nodes
    assert res.exit_code == 0, res.output
    assert (out / "README.txt").read_text() == "a user's note inside the store"
    tif = tmp_path / "emb.tif"
    tif.write_bytes(b"not ours")
    res = _cli(*_raster_args(scene, ckpt, str(tif), "--overwrite"))
    assert res.exit_code == 2 and tif.read_bytes() == b"not ours"
    res = _cli(*_raster_args(scene, ckpt, str(out.with_suffix(".tif"))))
    assert res.exit_code == 2  # still the user's file


def test_f1_embed_raster_on_s3_keeps_bucket_prefix_and_objects(
    s3_bucket: Any, scene: Path, ckpt: Path
) -> None:
    import json

    fs = s3_bucket.fs
    mine = {f"{s3_bucket.name}/prefix/user-{i}.txt": f"object {i}".encode() for i in range(5)}
    mine[f"{s3_bucket.name}/other/keep.bin"] = b"\x00\x01"
    for key, data in mine.items():
        fs.pipe_file(key, data)
    opts = json.dumps(s3_bucket.storage_options)
    for out in (s3_bucket.url(), s3_bucket.url("prefix"), s3_bucket.url("prefix", "user-1.txt")):
        for extra in ((), ("--overwrite",)):
            res = _cli(*_raster_args(scene, ckpt, out, "--storage-options", opts, *extra))
            assert res.exit_code == 2, (out, res.output)
            _one_error_line(res)
    out = s3_bucket.url("prefix", "emb.zarr")
    res = _cli(*_raster_args(scene, ckpt, out, "--storage-options", opts))
    assert res.exit_code == 0, res.output
    fs.invalidate_cache()
    assert fs.exists(s3_bucket.name)
    for key, data in mine.items():
        assert fs.cat_file(key) == data
    from pipelines.embed import check_raster_complete

    assert check_raster_complete(out, s3_bucket.storage_options)["aom_complete"] is True
    assert not fs.exists(f"{s3_bucket.name}/prefix/emb.zarr/_leases/writer.json")
    import xarray as xr

    # consolidated metadata written through the object store too: the plain open warns nothing
    ds = xr.open_zarr(out, storage_options=s3_bucket.storage_options)
    assert ds.attrs["aom_complete"] is True and ds["embeddings"].dims == ("dim", "y", "x")


# ------------------------------------------------------------------------------------------
# Finding 2: aom samples --out DIR deleted unrelated folders inside DIR


def test_f2_samples_refuses_a_users_folder_and_keeps_unrelated_folders(tmp_path: Path) -> None:
    users = tmp_path / "users"
    (users / "project").mkdir(parents=True)
    (users / "project" / "collection.json").write_text("{}")
    res = _cli("samples", "--out", str(users), "--no-real")
    assert res.exit_code == 2 and "not written by aom" in _one_error_line(res)
    assert (users / "project" / "collection.json").read_text() == "{}"

    out = tmp_path / "samples"
    assert _cli("samples", "--out", str(out), "--no-real").exit_code == 0
    (out / "mine").mkdir()
    (out / "mine" / "collection.json").write_text("{}")
    (out / "data" / "synthetic" / "my-item").mkdir()
    (out / "data" / "synthetic" / "my-item" / "x.tif").write_bytes(b"mine")
    import zarr

    zarr.open_group(str(out / "my_analysis.zarr"), mode="w").attrs["note"] = "a user's Zarr group"
    for extra in ((), ("--overwrite",)):
        res = _cli("samples", "--out", str(out), "--no-real", *extra)
        assert res.exit_code == 0, res.output
        assert (out / "mine" / "collection.json").read_text() == "{}"
        assert (out / "data" / "synthetic" / "my-item" / "x.tif").read_bytes() == b"mine"
        # a Zarr group in the folder is the user's: samples never writes Zarr (--overwrite removed it)
        assert zarr.open_group(str(out / "my_analysis.zarr"), mode="r").attrs["note"] == "a user's Zarr group"
        assert (out / "items.ndjson").is_file()


# ------------------------------------------------------------------------------------------
# Finding 6 (outputs): a killed GeoTIFF left *.partial-<pid>.tif; a killed Zarr opened as complete


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def test_f6_killed_geotiff_partial_is_cleaned_next_run(tmp_path: Path, scene: Path, ckpt: Path) -> None:
    out = tmp_path / "emb.tif"
    leftover = tmp_path / f"emb.tif.partial-{_dead_pid()}.tif"
    leftover.write_bytes(b"half a file")
    assert _cli(*_raster_args(scene, ckpt, str(out))).exit_code == 0
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.tif"]


def test_f6_interrupted_zarr_is_refused_by_readers_and_finished_by_a_rerun(
    tmp_path: Path, scene: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.embed import check_raster_complete, embed_raster
    from pipelines.embed import raster as raster_mod
    from pipelines.outputs import OutputError

    out = tmp_path / "emb.zarr"
    real = raster_mod._ZarrWriter.write
    calls = {"n": 0}

    def dies_after_first_strip(self: Any, row0: int, emb: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt  # as a kill between strips
        real(self, row0, emb)

    def run() -> None:  # the same command twice: interrupted, then rerun
        embed_raster(
            str(scene),
            str(out),
            str(ckpt),
            sensor="sentinel-2-msi",
            bands=["B02", "B03", "B04", "B08"],
            core_tokens=2,
            blend_tokens=0,  # one core row per strip: this small scene is written in several strips
            progress=False,
        )

    monkeypatch.setattr(raster_mod._ZarrWriter, "write", dies_after_first_strip)
    with pytest.raises(KeyboardInterrupt):
        run()
    with pytest.raises(OutputError, match="rerun the same aom embed-raster command"):
        check_raster_complete(str(out))
    monkeypatch.setattr(raster_mod._ZarrWriter, "write", real)
    run()
    assert check_raster_complete(str(out))["aom_complete"] is True
    assert not (out / "_leases").exists()


# ------------------------------------------------------------------------------------------
# Finding 3: two `aom cubes` runs into the same --out: the second deleted the tile the first was
# writing, which ended with a completion record but without its groups


@pytest.mark.slow
def test_f3_two_cube_runs_into_one_store_end_with_every_recorded_tile_complete(tmp_path: Path) -> None:
    import json
    import time

    from pipelines.cubes import CubeStore, write_cubes
    from tests.conftest import REPO_ROOT
    from tests.pipelines.cubes.support import GRID, X0, Y0, assert_stores_equal, s2_item, spec

    big = (X0, Y0, X0 + 3840.0, Y0 + 3840.0)  # 2 x 2 tiles of 1920 m
    its = [
        s2_item(tmp_path / "items", "W1", bounds=big, cloud_boxes=[(0.1, 0.1, 0.3, 0.5)]),
        s2_item(tmp_path / "items", "W2", bounds=big, datetime="2023-06-06T10:30:00Z", seed=5),
    ]
    nd = tmp_path / "items.ndjson"
    nd.write_text("".join(json.dumps(i) + "\n" for i in its))
    out = tmp_path / "cubes"
    cmd = [sys.executable, "-m", "flows.cli", "cubes", "--items", str(nd), "--out", str(out)]
    cmd += ["--tile-size-m", "1920", "--no-progress"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    first = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None and not (out / "_leases").is_dir():
        time.sleep(0.01)
    assert first.poll() is None, "the first run ended before the second started"
    second = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    first_out, _ = first.communicate(timeout=900)
    assert first.returncode == 0, first_out
    assert second.returncode == 0, second.stdout + second.stderr
    store = CubeStore.open(str(out))
    records = store.tile_records()
    n_tiles = len(GRID.tiles_for_items(its))
    assert len(records) == n_tiles
    for tile_id, rec in records.items():  # every recorded group is there and opens
        for g in rec.get("groups", []):
            store.open_group(tile_id, g["collection"], g["gsd_label"])
    clean_out = tmp_path / "clean"
    write_cubes(its, GRID.tiles_for_items(its), spec(), str(clean_out), progress=False)
    assert_stores_equal(store, CubeStore.open(str(clean_out)))
    assert not any((out / "_leases").glob("*.json"))


# ------------------------------------------------------------------------------------------
# Findings 6 and 7 (queries): export/map read tiles without a completion record; one truncated
# shard crashed every query with a checksum traceback naming no tile


def _store_with_faults(root: Path) -> tuple[Any, str, str]:
    """A synthetic embeddings store; one tile loses its record (a killed writer), one tile's shard is
    truncated. Returns (store, unrecorded tile id, corrupt tile id)."""
    from pipelines.embeddings import record_url
    from pipelines.testing import build_synthetic_store

    store = build_synthetic_store(str(root), times_to_write=[0], stac=False)
    zone = store.tiles[0].epsg
    same_zone = [t for t in store.tiles if t.epsg == zone]
    unrecorded, corrupt = same_zone[0].tile_id, same_zone[1].tile_id
    os.unlink(record_url(str(root), store.version.name, unrecorded, 0))
    from pipelines.query import open_embeddings

    emb = open_embeddings(str(root))
    ref = next(r for r in emb.tiles(0)[zone] if r.tile_id == corrupt)
    n = emb.version.tokens_per_tile
    shard = (
        root
        / store.version.name
        / str(zone)
        / "embeddings"
        / "c"
        / "0"  # time
        / "0"  # dim (format 2 is band-first: one shard spans every dim)
        / str(ref.row0 // n)
        / str(ref.col0 // n)
    )
    assert shard.is_file(), sorted(
        str(p) for p in (root / store.version.name / str(zone) / "embeddings").rglob("*")
    )[:5]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return store, unrecorded, corrupt


def test_f6_f7_queries_read_recorded_tiles_only_and_skip_a_corrupt_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pipelines.query import open_embeddings, select, similar

    store, unrecorded, corrupt = _store_with_faults(tmp_path / "emb")
    emb = open_embeddings(str(tmp_path / "emb"))
    zone = store.tiles[0].epsg
    n = emb.version.tokens_per_tile
    g = emb.grid(zone)
    tile = next(t for t in store.tiles if t.tile_id == unrecorded)
    r0, _, c0, _ = g.tile_window(tile.bounds)
    window = emb.read_recorded(zone, 0, slice(r0, r0 + n), slice(c0, c0 + n))
    assert np.isnan(window).all()  # its shard holds data, but it has no completion record
    assert np.isfinite(emb.read_window(zone, 0, slice(r0, r0 + n), slice(c0, c0 + n))).any()
    with caplog.at_level("WARNING"):
        sel = select(emb, emb.extent_wgs84())
        assert np.isfinite(sel.values).any()
        assert corrupt in emb.unreadable
        vec = np.ones(emb.dim, dtype=np.float32)
        res = similar(emb, vectors=vec[None, :], k=5, scheduler="synchronous")
        assert len(res) == 5
    assert any(corrupt in r.message for r in caplog.records)


def test_f1_query_exports_never_write_over_a_folder_a_bucket_root_or_the_store(tmp_path: Path) -> None:
    from pipelines.outputs import OutputError
    from pipelines.query import export, open_embeddings
    from pipelines.testing import build_synthetic_store

    build_synthetic_store(str(tmp_path / "emb"), times_to_write=[0], stac=False)
    emb = open_embeddings(str(tmp_path / "emb"))
    (tmp_path / "folder.tif").mkdir()
    (tmp_path / "folder.tif" / "keep.txt").write_text("keep")
    for out, match in (
        (str(tmp_path / "folder.tif"), "is a folder"),
        ("s3://bucket", "bucket root"),
        (str(tmp_path / "emb"), "is the input"),
    ):
        with pytest.raises(OutputError, match=match):
            export(emb, emb.extent_wgs84(), out, fmt="geotiff")
    assert (tmp_path / "folder.tif" / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_f1_cubes_never_builds_a_store_in_a_users_folder_or_prefix(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import json

    from tests.pipelines.cubes.support import X0, Y0, s2_item

    item = s2_item(tmp_path / "items", "U1", bounds=(X0, Y0, X0 + 1920.0, Y0 + 1920.0))
    nd = tmp_path / "items.ndjson"
    nd.write_text(json.dumps(item) + "\n")
    args = ["cubes", "--items", str(nd), "--tile-size-m", "1920", "--no-progress"]
    if where == "local":
        out = tmp_path / "mine"
        out.mkdir()
        (out / "thesis.txt").write_text("keep")
        res = _cli(*args, "--out", str(out))
        assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]
    else:
        bucket = request.getfixturevalue("s3_bucket")
        bucket.fs.pipe_file(f"{bucket.name}/mine/thesis.txt", b"keep")
        opts = json.dumps(bucket.storage_options)
        res = _cli(*args, "--out", bucket.url("mine"), "--storage-options", opts)
        bucket.fs.invalidate_cache()
        assert bucket.fs.find(f"{bucket.name}/mine") == [f"{bucket.name}/mine/thesis.txt"]
    assert res.exit_code == 2, res.output
    assert "not written by aom" in _one_error_line(res)

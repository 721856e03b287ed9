"""The fault matrix of issue "nothing lost": each finding reproduced against local disk and moto S3.

Every test states the finding it reproduces; each asserts that what the user owns survives
(files, objects, prefixes, buckets), that the command exits with the documented code and one
``error:`` line, and that the result is whole. The contract is ``docs/safety.md``.
"""

from __future__ import annotations

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
    for extra in ((), ("--overwrite",)):
        res = _cli("samples", "--out", str(out), "--no-real", *extra)
        assert res.exit_code == 0, res.output
        assert (out / "mine" / "collection.json").read_text() == "{}"
        assert (out / "data" / "synthetic" / "my-item" / "x.tif").read_bytes() == b"mine"
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

    monkeypatch.setattr(raster_mod._ZarrWriter, "write", dies_after_first_strip)
    with pytest.raises(KeyboardInterrupt):
        embed_raster(
            str(scene),
            str(out),
            str(ckpt),
            sensor="sentinel-2-msi",
            bands=["B02", "B03", "B04", "B08"],
            core_tokens=2,
            progress=False,
        )
    with pytest.raises(OutputError, match="rerun the same aom embed-raster command"):
        check_raster_complete(str(out))
    monkeypatch.setattr(raster_mod._ZarrWriter, "write", real)
    embed_raster(
        str(scene),
        str(out),
        str(ckpt),
        sensor="sentinel-2-msi",
        bands=["B02", "B03", "B04", "B08"],
        core_tokens=2,
        progress=False,
    )
    assert check_raster_complete(str(out))["aom_complete"] is True
    assert not (out / "_leases").exists()

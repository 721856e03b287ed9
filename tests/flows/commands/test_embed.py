"""``aom embed`` output: the run summary once, on stdout, and a warning line on stderr when not
one tile of the request has a cube in the store (exit 0: tiles without a cube are skipped)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipelines.tiling import TileGrid

FAR = "9.99,49.99,10.01,50.01"  # an AOI 600 km from the store's one cube
N_FAR = len(TileGrid(960.0).tiles_for_bbox((9.99, 49.99, 10.01, 50.01)))

REPO = Path(__file__).resolve().parents[3]
CKPT = str(REPO / "checkpoints" / "aom-tiny-real.safetensors")


@pytest.fixture(scope="module")
def cubes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cube store of 960 m tiles whose one cube is the grid tile at 6 E, 45 N (the synthetic
    writer names its tiles T000 ...: its cube and record are renamed)."""
    from pipelines.testing.cubes import SENTINEL2, write_synthetic_cubes

    root = tmp_path_factory.mktemp("cubes") / "store"
    write_synthetic_cubes(root, n_tiles=1, n_times=1, tile_m=960.0, collections=(SENTINEL2,))
    tile = TileGrid(960.0).tile_at(6.0, 45.0)
    record = (root / "_tiles" / "T000.json").read_text().replace('"T000"', f'"{tile.tile_id}"')
    (root / "_tiles" / f"{tile.tile_id}.json").write_text(record)
    (root / "_tiles" / "T000.json").unlink()
    shutil.move(root / "T000", root / tile.tile_id)
    return root


def _embed(cubes: Path, out: Path, *area: str) -> list[str]:
    return [
        "embed",
        "--checkpoint",
        CKPT,
        "--out",
        str(out),
        "--datetime",
        "2023-01-01/2023-12-31",
        "--cubes",
        str(cubes),
        "--tile-size-m",
        "960",
        "--workers",
        "0",
        "--no-progress",
        *area,
    ]


def test_an_aoi_away_from_every_cube_warns_once_naming_the_store_s_extent(
    cubes: Path, tmp_path: Path
) -> None:
    """Every tile 'skipped: no cube' and exit 0 said nothing of the likely mistake (another AOI or
    store): one warning line names the store's extent and the AOI."""
    r = CliRunner().invoke(app, _embed(cubes, tmp_path / "emb", "--aoi", FAR))
    assert r.exit_code == 0, (r.output, r.exception)
    assert f"skipped: {N_FAR} x no cube for this tile (not built)" in r.stdout
    (line,) = [ln for ln in r.stderr.splitlines() if "warning" in ln.lower()]
    assert line.startswith(f"warning: none of the {N_FAR} tile(s) of --aoi {FAR} has a cube in {cubes}, ")
    assert "whose 1 cube(s) cover lon 5.9" in line and "lat 44.9" in line, line
    assert "check --aoi/--tiles and --cubes" in line


def test_the_warning_names_a_geojson_aoi_or_a_tile_list_by_its_extent(cubes: Path, tmp_path: Path) -> None:
    aoi = tmp_path / "aoi.geojson"
    ring = [[9.99, 49.99], [10.01, 49.99], [10.01, 50.01], [9.99, 50.01], [9.99, 49.99]]
    aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    far = TileGrid(960.0).tile_at(10.0, 50.0)
    for area, named in (
        (["--aoi", str(aoi)], "of --aoi (lon 9.99..10.01, lat 49.99..50.01) has a cube"),
        (["--tiles", far.tile_id], "none of the 1 tile(s) of --tiles (lon 9.99"),
    ):
        r = CliRunner().invoke(app, _embed(cubes, tmp_path / "emb", *area))
        assert r.exit_code == 0, (r.output, r.exception)
        (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ")]
        assert named in line and "whose 1 cube(s) cover lon 5.9" in line, line


def test_no_warning_when_some_tile_has_a_cube(cubes: Path, tmp_path: Path) -> None:
    tile = TileGrid(960.0).tile_at(6.0, 45.0)
    far = TileGrid(960.0).tile_at(10.0, 50.0)
    r = CliRunner().invoke(app, _embed(cubes, tmp_path / "emb", "--tiles", f"{tile.tile_id},{far.tile_id}"))
    assert r.exit_code == 0, (r.output, r.exception)
    assert "warning" not in r.stderr.lower(), r.stderr
    assert "skipped: 1 x no cube for this tile (not built)" in r.stdout


def test_the_run_summary_is_printed_once(cubes: Path, tmp_path: Path) -> None:
    """The summary was printed on stdout and again as an INFO log line on stderr; the log keeps a
    one-line count."""
    r = subprocess.run(
        [sys.executable, "-m", "flows.cli", *_embed(cubes, tmp_path / "emb", "--aoi", FAR)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    head = "embeddings aom-custom-"
    assert r.stdout.count(head) == 1 and head not in r.stderr, r.stderr
    assert r.stdout.count("no cube for this tile") == 1 and "no cube for this tile" not in r.stderr
    assert f"embed: 0 done, 0 empty, 0 failed, {N_FAR} skipped in" in r.stderr

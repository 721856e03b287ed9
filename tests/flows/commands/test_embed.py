"""``aom embed`` output: the run summary once, on stdout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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

"""A complete tile is rebuilt aside and swapped in only once the rebuild is whole
(``pipelines.cubes.rebuild``): a read that fails during a rebuild (a server down at the preflight
open, or only once the pixels are loaded) fails the tile and keeps the complete one, record and data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from pipelines.cubes import CubeStore, write_cubes
from pipelines.cubes.reading import read_attempts
from pipelines.cubes.rebuild import STAGING_DIR
from pipelines.runs import TileStatus
from tests.pipelines.cubes.support import TILE_IDS, assert_stores_equal, spec
from tests.services import free_port

TILES = TILE_IDS[:2]


def _served_by(item: dict[str, Any], base: str) -> dict[str, Any]:
    """A copy of ``item`` whose asset hrefs point at ``base`` (same file names)."""
    out = json.loads(json.dumps(item))
    for asset in out["assets"].values():
        asset["href"] = f"{base}/{Path(asset['href']).name}"
    return out


@pytest.fixture
def store_of_a_and_b(built: dict[str, Any], tmp_path: Path) -> Path:
    """A copy of the shared store of A and B (complete tiles)."""
    out = tmp_path / "cubes"
    shutil.copytree(built["out"], out)
    return out


def _records(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((out / "_tiles").glob("*.json"))}


@pytest.mark.parametrize("preflight", [True, False], ids=["at-preflight", "at-load"])
def test_a_rebuild_whose_new_item_is_unreachable_keeps_the_complete_tiles(
    scene: dict[str, Any], built: dict[str, Any], store_of_a_and_b: Path, preflight: bool
) -> None:
    """Complete tiles of A and B; a run given A, B and A2 whose server is down rebuilds them for A2.
    The reads of A2 fail (at the preflight open, or without preflight only when odc-stac loads the
    pixels during the write): every tile fails, is retried next run, and keeps its record and data
    (before, the record was removed and the tile cleared before the first read: both were lost)."""
    out = store_of_a_and_b
    before = _records(out)
    down = _served_by(scene["A2"], f"http://127.0.0.1:{free_port()}/A2")  # nothing listens there
    items = [scene["A"], scene["B"], down]
    # one attempt per request: what is tested is the kept tile, not GDAL's waits between retries
    # (5 attempts by default: 7.5 s per failed request; each tile build asks the dead host through
    # one such chain, then no more, hosts.FailedHosts: 26-34 s per case, 45-242 s before it)
    run = write_cubes(
        items, TILES, spec(preflight=preflight), str(out), progress=False, read_options=read_attempts(1)
    )
    assert [o.status for o in run.outcomes] == [TileStatus.FAILED] * len(TILES), run.format()
    assert _records(out) == before  # the same records, byte for byte
    assert_stores_equal(CubeStore.open(str(out)), CubeStore.open(str(built["out"])))
    for o in run.outcomes:
        assert "unreachable" in o.reason and "the complete tile is kept" in o.reason, o.reason
    assert run.exit_code == 1  # the run did not do its job: nothing was written
    assert not (out / STAGING_DIR).exists() or not any((out / STAGING_DIR).iterdir())
    assert not list(out.glob("_leases/*"))

    # the server is back: the next run rebuilds the tiles with A2
    rerun = write_cubes(
        [scene["A"], scene["B"], scene["A2"]], TILES, spec(preflight=preflight), str(out), progress=False
    )
    assert {(o.status, o.reason) for o in rerun.outcomes} == {(TileStatus.DONE, "rebuilt with 1 new item(s)")}
    store = CubeStore.open(str(out))
    assert all("A2" in store.record(t)["items"] for t in TILES)
    assert not (out / STAGING_DIR).exists() or not any((out / STAGING_DIR).iterdir())


def test_what_a_killed_rebuild_left_aside_is_removed_by_the_next_one(
    scene: dict[str, Any], store_of_a_and_b: Path
) -> None:
    """A rebuild killed while building aside leaves ``_rebuild/<tile_id>`` and the complete tile;
    the next rebuild of the tile removes the leftovers before it builds, then swaps in its own."""
    out = store_of_a_and_b
    left = out / STAGING_DIR / TILES[0] / "sentinel-2-l2a" / "10m"
    left.mkdir(parents=True)
    (left / "zarr.json").write_text("{}")
    run = write_cubes([scene["A"], scene["B"], scene["A2"]], TILES[:1], spec(), str(out), progress=False)
    assert run.tiles_done == TILES[:1], run.format()
    assert not (out / STAGING_DIR).exists()
    store = CubeStore.open(str(out))
    assert store.record(TILES[0])["considered_items"] == ["A", "A2", "B"]
    assert {k for k, _ in store.open_tile(TILES[0]).items()} == {
        (g["collection"], g["gsd_label"]) for g in store.record(TILES[0])["groups"]
    }


@pytest.mark.integration
def test_rebuilds_on_object_storage_swap_in_whole_or_keep_the_tile(
    scene: dict[str, Any], built: dict[str, Any], s3_bucket: Any
) -> None:
    """On S3 (moto) the swap is a server-side copy per object: a rebuild that fails keeps the tile
    of A, the one that succeeds equals a clean run of A and B, with nothing left aside."""
    url, options = s3_bucket.url("cubes"), s3_bucket.storage_options
    write_cubes([scene["A"]], TILES[:1], spec(), url, options, progress=False)
    store = CubeStore.open(url, options)
    before = store.record(TILES[0])
    down = _served_by(scene["B"], f"http://127.0.0.1:{free_port()}/B")
    # one attempt per request, as above: GDAL's 5 default attempts wait 7.5 s on the dead host
    failed = write_cubes(
        [scene["A"], down], TILES[:1], spec(), url, options, progress=False, read_options=read_attempts(1)
    )
    assert failed.tiles_failed and store.record(TILES[0]) == before
    assert store.open_tile(TILES[0])  # its data is still there
    done = write_cubes([scene["A"], scene["B"]], TILES[:1], spec(), url, options, progress=False)
    assert done.tiles_done == TILES[:1], done.format()
    assert_stores_equal(store, CubeStore.open(str(built["out"])), TILES[:1])
    assert not s3_bucket.fs.exists(f"{s3_bucket.name}/cubes/{STAGING_DIR}")

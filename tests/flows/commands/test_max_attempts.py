"""``--max-attempts`` of `aom cubes` and `aom embed`: the attempts per request of their catalog
search (a flaky network raises it, a fail-fast check lowers it), as `aom search` has it, and of
each HTTP request of their asset reads (GDAL_HTTP_MAX_RETRY = N-1).

Each request to a local fake STAC API is counted: a catalog that keeps failing gets exactly
``--max-attempts`` requests and the run fails (exit 1: rerun later); one that fails fewer times than
that is searched (the run goes on past the search).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipelines.errors import EXIT_FAILED, EXIT_USAGE, InputError
from tests.pipelines.search.support import S2, fake_api, make_item

REPO = Path(__file__).resolve().parents[3]
CKPT = str(REPO / "checkpoints" / "aom-tiny-real.safetensors")


# the fake API serves the collection, and its one item is far from the area (nothing to read)
FAR = [make_item("S2A_far", S2, (100.0, 10.0, 100.5, 10.5), "2023-06-10T03:00:00Z", epsg=32647)]


def _cubes(url: str, out: Path, *extra: str) -> Any:
    args = ["cubes", "--catalog-url", url, "-c", S2, "--bbox", "5.9,44.9,6.1,45.1", "--out", str(out)]
    return CliRunner().invoke(app, [*args, "--datetime", "2023", "--no-progress", *extra])


def _embed(url: str, out: Path, *extra: str) -> Any:
    args = ["embed", "--checkpoint", CKPT, "--out", str(out), "--datetime", "2023-06-01/2023-06-30"]
    args += ["--catalog-url", url, "--tiles", "32631_95_649", "--workers", "0", "--no-progress"]
    return CliRunner().invoke(app, [*args, *extra])


@pytest.fixture
def planned(monkeypatch: pytest.MonkeyPatch) -> None:
    """`aom cubes` stops right after its search (exit 2, ``error: planned``): only the search is tested."""

    def fake_plan(request: Any, items: Any) -> Any:
        raise InputError("planned")

    monkeypatch.setattr("pipelines.cubes.plan_cubes", fake_plan)


@pytest.mark.parametrize("attempts", [1, 2])
def test_cubes_search_makes_max_attempts_requests_then_fails(
    attempts: int, tmp_path: Path, planned: None
) -> None:
    with fake_api([], fail_always=503, retry_after="0") as api:
        r = _cubes(api.url, tmp_path / "cubes", "--max-attempts", str(attempts))
        assert len(api.requests) == attempts, api.requests
    assert r.exit_code == EXIT_FAILED, r.output
    assert f"after {attempts} attempt" in r.stderr and "HTTP 503" in r.stderr
    assert not (tmp_path / "cubes").exists()


def test_cubes_search_with_enough_attempts_gets_through(tmp_path: Path, planned: None) -> None:
    with fake_api(FAR, fail_first=[503, 503], retry_after="0") as api:
        r = _cubes(api.url, tmp_path / "cubes", "--max-attempts", "3")
        assert len(api.requests) >= 3
    assert r.exit_code == EXIT_USAGE and "error: planned" in r.stderr, r.output  # past the search


def test_embed_catalog_search_makes_max_attempts_requests_then_fails(tmp_path: Path) -> None:
    with fake_api([], fail_always=503, retry_after="0") as api:
        r = _embed(api.url, tmp_path / "emb", "--max-attempts", "1")
        assert len(api.requests) == 1, api.requests
    assert r.exit_code == EXIT_FAILED, r.output
    assert "catalog search failed" in r.stderr and "after 1 attempt" in r.stderr
    assert not (tmp_path / "emb").exists()


def test_embed_catalog_search_with_enough_attempts_gets_through(tmp_path: Path) -> None:
    with fake_api(FAR, fail_first=[503, 503], retry_after="0") as api:
        r = _embed(api.url, tmp_path / "emb", "--max-attempts", "3")
        assert len(api.requests) >= 3
    assert "catalog search failed" not in r.output, r.output
    assert r.exit_code == 0, r.output


def test_embed_against_a_closed_port_fails_fast_with_one_attempt(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    r = _embed(f"http://127.0.0.1:{port}", tmp_path / "emb", "--max-attempts", "1")
    assert r.exit_code == EXIT_FAILED, r.output
    assert "after 1 attempt" in r.stderr
    assert time.monotonic() - start < 5  # no backoff waits (5 attempts wait ~2-4 s in all)


# ------------------------------------------------------------------------------ asset reads


def _asset_requests(tmp_path: Path, attempts: int) -> int:
    """Requests to the assets of a one-item `aom cubes --items` run whose asset server answers 503
    to everything (each run its own hrefs: GDAL remembers a failed href for the process)."""
    from pipelines.testing import make_item as make_cube_item
    from tests.pipelines.access_servers import serve
    from tests.pipelines.cubes.support import SCENE, TILE_IDS

    root = tmp_path / f"assets-{attempts}"
    folder = root / "blobs"
    folder.mkdir(parents=True)
    item = make_cube_item(folder, item_id="S2A_1", bounds=SCENE, bands=("B04",))
    items = tmp_path / f"items-{attempts}.ndjson"
    with serve(root, force=[503] * 10_000) as server:
        for asset in item["assets"].values():
            asset["href"] = server.href(Path(asset["href"]))
        items.write_text(json.dumps(item) + "\n")
        args = ["cubes", "--items", str(items), "--out", str(tmp_path / f"cubes-{attempts}")]
        args += ["--tiles", TILE_IDS[0], "--tile-size-m", "1920", "--catalog", "sample", "--no-progress"]
        r = CliRunner().invoke(app, [*args, "--max-attempts", str(attempts)])
        n = len(server.file_requests())
    assert r.exit_code == EXIT_FAILED, r.output  # the tile failed, unrecorded: the next run reads it again
    assert "503" in r.output
    return n


def test_cubes_max_attempts_bounds_each_http_request_of_the_asset_reads(tmp_path: Path) -> None:
    """``--max-attempts N`` is the attempts per HTTP request of the asset reads too (GDAL_HTTP_MAX_RETRY
    = N-1): with 3, every request GDAL makes is tried 3 times where 1 tries it once. Before, the reads
    kept GDAL's fixed 3 retries whatever --max-attempts said."""
    once = _asset_requests(tmp_path, 1)
    assert once >= 1
    thrice = _asset_requests(tmp_path, 3)
    assert thrice == 3 * once

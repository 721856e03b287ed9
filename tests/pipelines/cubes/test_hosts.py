"""A tile build's memory of dead asset hosts (``pipelines.cubes.hosts``) learns the host a failed
odc-stac load names, so the diagnosis of that load does not spend another retry chain on it."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rasterio.errors

from pipelines.cubes import write_cubes
from pipelines.cubes.diagnosis import diagnose_read_failure
from pipelines.cubes.hosts import FailedHosts, named_host
from pipelines.cubes.reading import read_attempts
from pipelines.cubes.tilecube import TileCube
from pipelines.runs import TileStatus
from tests.pipelines.cubes.support import GRID, TILE_IDS, spec

HREFS = ["https://h1.example/a/B04.tif", "https://h1.example/a/B08.tif", "http://h2.example:8080/B04.tif"]


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("/vsicurl/https://h1.example/a/B04.tif: HTTP response code: 503", "https://h1.example"),
        (
            "CURL error: Failed to connect to h2.example port 8080 after 0 ms: Could not connect",
            "http://h2.example:8080",
        ),
        ("CURL error: Failed to connect to h1.example port 443 after 3 ms: Timed out", "https://h1.example"),
        ("CURL error: Could not resolve host: h1.example", "https://h1.example"),
        ("HTTP response code: 503 - Failure writing output to destination", ""),  # odc-stac's open: no href
        ("Read failed. B08.tif, band 1: IReadBlock failed at X offset 0", ""),  # a file name only
        ("CURL error: Failed to connect to h1.example port 80 after 0 ms", ""),  # no source on that port
        ("/vsicurl/https://other.example/B04.tif: HTTP response code: 503", ""),  # not this tile's source
        ("https://h1.example/a/B04.tif and http://h2.example:8080/B04.tif failed", ""),  # which one: unknown
        (
            "GET http://[::1 cut short: https://h1.example/a/B04.tif",
            "https://h1.example",
        ),  # a URL that does not parse
    ],
)
def test_the_host_a_failure_names_is_found_only_when_it_is_one_of_the_sources(text: str, host: str) -> None:
    assert named_host([text], HREFS) == host


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A local port bound but not listening: every connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _cube(href: str) -> TileCube:
    cube = TileCube(tile=GRID.tile(TILE_IDS[0]), spec=spec(), failed_hosts=FailedHosts())
    cube.read_options = read_attempts(1)  # one request per read: the dead port answers at once
    cube.sources[("sentinel-2-l2a", "10m")] = [("P", "red", href)]
    return cube


@pytest.mark.parametrize(
    ("status", "asked_no_more"), [(503, True), (404, False), (403, False)], ids=["503", "404", "403"]
)
def test_the_diagnosis_asks_no_more_the_host_a_transient_load_failure_names(
    dead_port: int, status: int, asked_no_more: bool
) -> None:
    """The load failed on a named href: after a transient failure (its retry chain spent) the
    diagnosis fails the host's assets at once; a 404 (a missing file) or a refusal marks no host,
    and the diagnosis reads the asset itself."""
    href = f"http://127.0.0.1:{dead_port}/B04.tif"
    error = rasterio.errors.RasterioIOError(f"/vsicurl/{href}: HTTP response code: {status}")
    (found,) = diagnose_read_failure(_cube(href), error=error)
    assert ("failed earlier in this tile" in found.reason) is asked_no_more, found
    assert found.transient


def test_a_load_failure_that_names_no_host_marks_none(dead_port: int) -> None:
    href = f"http://127.0.0.1:{dead_port}/B04.tif"
    error = rasterio.errors.RasterioIOError("HTTP response code: 503 - Failure writing output to destination")
    cube = _cube(href)
    (found,) = diagnose_read_failure(cube, error=error)
    assert "failed earlier in this tile" not in found.reason and "connect" in found.reason.lower(), found


def test_a_host_the_failed_load_could_not_connect_to_is_asked_no_more_by_the_diagnosis(
    scene: dict[str, Any], tmp_path: Path, dead_port: int
) -> None:
    """At-load (no preflight), A2's 13 assets on a host that refuses connections: odc-stac's load
    fails with curl's ``Failed to connect to 127.0.0.1 port <p>``, which names the host, so the
    diagnosis asks it no more: every one of the 13 is ``not asked``. Before, the diagnosis' first
    read of the host was asked again (one more retry chain) and failed with its own reason."""
    down = json.loads(json.dumps(scene["A2"]))
    for asset in down["assets"].values():
        asset["href"] = f"http://127.0.0.1:{dead_port}/{Path(asset['href']).name}"
    out = str(tmp_path / "cubes")
    fast = {"GDAL_HTTP_RETRY_DELAY": "0.01"}
    run = write_cubes(
        [scene["A"], down], TILE_IDS[:1], spec(preflight=False), out, progress=False, read_options=fast
    )
    (outcome,) = run.outcomes
    assert outcome.status == TileStatus.FAILED and "13 asset(s) unreachable" in outcome.reason, run.format()
    assert len(outcome.skipped) == 13 and all(s["transient"] for s in outcome.skipped)
    assert all("failed earlier in this tile" in s["reason"] for s in outcome.skipped), outcome.skipped
    assert all(f"127.0.0.1 port {dead_port}" in s["reason"] for s in outcome.skipped), outcome.skipped

"""How a failed read of a source asset is classified (``pipelines.cubes.reading``): only a file that
is not there (ENOENT, HTTP 404 or 410) or a corrupt one is left out for good; a refused read (HTTP
401/403, a file the process may not read) is an access denied; any other OS or network error, or any
other HTTP error answer, fails the tile, unrecorded, so the next run reads it again."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import multidict
import pytest
import rasterio.errors
import yarl

from pipelines.cubes import CubeStore, write_cubes
from pipelines.cubes.hosts import FailedHosts
from pipelines.cubes.reading import (
    _OPEN_CACHE,
    _absolute_href,
    access_denied,
    classify_error,
    forget_failed_reads,
    open_header,
    open_headers,
    read_attempts,
    rio_env,
    tile_failure_retryable,
)
from pipelines.retry import RETRY_STATUSES, is_access_denied, is_transient, worth_a_rerun
from pipelines.runs import TileStatus
from pipelines.storage import local_href
from tests.conftest import REPO_ROOT, aom_command, cli_env
from tests.pipelines.access_servers import serve
from tests.pipelines.cubes.support import TILE_IDS, assert_stores_equal, s2_item, spec
from tests.sigterm import held_pool, sigterm_when, wait_for_the_signal

OS_ERRORS = ["EIO", "EMFILE", "ENFILE", "ESTALE", "ETIMEDOUT", "EAGAIN", "ENOTCONN"]


@pytest.mark.parametrize("name", OS_ERRORS)
def test_os_errors_of_a_read_are_transient(name: str) -> None:
    code = getattr(errno, name)
    assert classify_error(OSError(code, os.strerror(code), "/data/B04.tif"))[1], name
    # GDAL (through rasterio) reports them by their text only
    assert classify_error(rasterio.errors.RasterioIOError(f"/data/B04.tif: {os.strerror(code)}"))[1], name


def _answer(status: int) -> BaseException:
    """What fsspec's ``http://`` raises for an error answer (other than 404)."""
    url = yarl.URL("http://h.example/B04.tif")
    info = aiohttp.RequestInfo(url, "GET", multidict.CIMultiDictProxy(multidict.CIMultiDict()), url)
    return aiohttp.ClientResponseError(info, (), status=status, message="x")


@pytest.mark.parametrize(
    "error",
    [
        *(rasterio.errors.RasterioIOError(f"HTTP response code: {code}") for code in sorted(RETRY_STATUSES)),
        rasterio.errors.RasterioIOError("HTTP response code: 501"),
        # a proxy's 503 page quoted by GDAL: the status decides, not the page's words
        rasterio.errors.RasterioIOError("HTTP response code: 503 - <title>Access Denied</title>"),
        # what another HTTP client raises reads as pipelines.retry's one rule says (fsspec's http://)
        _answer(503),
        aiohttp.ServerTimeoutError(),
    ],
)
def test_every_error_the_retry_rule_retries_is_transient(error: BaseException) -> None:
    """A read error :func:`pipelines.retry.is_transient` retries is never left out for good (HTTP 425
    and other clients' answers were read as permanent: the asset skipped and recorded)."""
    assert classify_error(error)[1]


@pytest.mark.parametrize("status", [400, 405, 416, 407, 421, 451])
def test_an_error_answer_that_does_not_say_the_file_is_gone_fails_the_tile(status: int) -> None:
    """An HTTP 400, 405 or 416 (or another answer but 404/410) says the request did not suit the
    server (a proxy, a misconfigured endpoint or signing, no range reads), not that the file is gone:
    the tile fails and the next run reads the asset again. They were left out and recorded for good."""
    assert classify_error(rasterio.errors.RasterioIOError(f"HTTP response code: {status}"))[1]
    assert classify_error(
        rasterio.errors.RasterioIOError(f"/vsicurl/https://h.example/B04.tif: HTTP response code: {status}")
    )[1]
    assert classify_error(_answer(status))[1]  # another client's answer (fsspec's http://)
    # GDAL's generic message chained to the one that names the status
    cause = rasterio.errors.RasterioIOError(f"HTTP response code: {status}")
    error = rasterio.errors.RasterioIOError("See previous exception")
    error.__cause__ = cause
    assert classify_error(error)[1]


def test_a_server_that_refuses_range_reads_fails_the_tile() -> None:
    """GDAL's words for a 416 (or another status) answered to a range read after the size probe
    succeeded: a server or proxy without range reads, not a file that is gone."""
    for status in (416, 400, 200):
        message = f"{status}: Range downloading not supported by this server: x"
        assert classify_error(rasterio.errors.RasterioIOError(message))[1], status


@pytest.mark.parametrize(
    "error",
    [
        rasterio.errors.RasterioIOError("HTTP response code: 403"),
        _answer(403),
    ],
)
def test_a_refused_read_is_not_transient(error: BaseException) -> None:
    assert not classify_error(error)[1]


def _refused_reads() -> list[BaseException]:
    """A refused read in each form: (a) GDAL's text of a local or ``/vsi`` file it may not read,
    (b) Python's ``PermissionError`` (fsspec's or ``open``'s of a local file), (c) an HTTP 401/403
    answer, in GDAL's text or another client's (fsspec's ``http://``, here with no reason phrase)."""
    see_previous = rasterio.errors.RasterioIOError("See previous exception")
    see_previous.__cause__ = rasterio.errors.RasterioIOError("/data/B04.tif: Permission denied")
    return [
        rasterio.errors.RasterioIOError("/data/B04.tif: Permission denied"),  # (a)
        rasterio.errors.RasterioIOError("/vsimount/B04.tif: Operation not permitted"),
        see_previous,
        PermissionError(errno.EACCES, "Permission denied", "/data/B04.tif"),  # (b)
        PermissionError(errno.EPERM, "Operation not permitted", "/data/B04.tif"),
        rasterio.errors.RasterioIOError("HTTP response code: 401"),  # (c)
        rasterio.errors.RasterioIOError("/vsicurl/https://h.example/B04.tif: HTTP response code: 403"),
        _answer(401),
        _answer(403),
    ]


def _assert_refused(error: BaseException) -> None:
    """``error`` reads as an access denied through every entry point: never a missing asset (the
    reason says "denied", so the assembly raises ``AccessDeniedError`` and records nothing), never
    transient, and no later run soon may pass it (``TileOutcome.retryable``, ``TileResult.retryable``)."""
    reason, transient = classify_error(error)
    assert not transient, reason
    assert is_access_denied(reason), reason
    assert is_access_denied(error)
    assert not is_transient(error) and not worth_a_rerun(error)
    assert not tile_failure_retryable(error)


@pytest.mark.parametrize("error", _refused_reads(), ids=lambda e: type(e).__name__)
def test_a_refused_read_is_an_access_denied_whatever_its_form(error: BaseException) -> None:
    """A local file the process may not read and an HTTP 401/403 are one failure. Before, GDAL's
    "Permission denied" and a ``PermissionError`` were transient (the tile failed as "unreachable",
    worth the flow run's retry for GDAL's), and fsspec's 401/403 without a reason phrase read as a
    missing file (left out and recorded)."""
    _assert_refused(error)


_OPEN_UNREADABLE = """
import base64, pickle, sys
import rasterio
from pipelines.cubes.reading import _OPEN_CACHE, open_header
try:
    rasterio.open(sys.argv[1])
except Exception as exc:
    error = exc
print(base64.b64encode(pickle.dumps((error, open_header(sys.argv[1]), _OPEN_CACHE.get(sys.argv[1])))).decode())
"""


def test_a_local_geotiff_rasterio_may_not_read_is_an_access_denied(tmp_path: Path) -> None:
    """A real GeoTIFF of mode 000, opened by rasterio (GDAL's "Permission denied"): an access denied
    everywhere, and ``open_header`` neither calls it transient nor remembers it as a bad file."""
    import base64
    import pickle

    path = Path(s2_item(tmp_path / "items", "P")["assets"]["red"]["href"])  # a GeoTIFF (COG)
    path.chmod(0)
    try:
        if os.geteuid() != 0:
            with pytest.raises(rasterio.errors.RasterioIOError) as raised:
                rasterio.open(path)
            error: BaseException = raised.value
            opened, cached = open_header(str(path)), _OPEN_CACHE.get(str(path))
        else:  # root reads a mode-000 file: read it in a process without those capabilities
            cmd = _unprivileged([sys.executable, "-c", _OPEN_UNREADABLE, str(path)])
            run = subprocess.run(
                cmd, cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=120
            )
            assert run.returncode == 0, run.stderr
            error, opened, cached = pickle.loads(base64.b64decode(run.stdout.strip().splitlines()[-1]))
    finally:
        path.chmod(0o644)
    assert "Permission denied" in str(error)
    _assert_refused(error)
    assert isinstance(opened, tuple) and not opened[1] and is_access_denied(opened[0]), opened
    assert cached is None  # not remembered as a file that cannot be read: the next try reads again


def test_a_refused_local_read_names_the_file_permissions_not_a_credential() -> None:
    reason = "cannot open: /data/B04.tif: Permission denied"
    error = access_denied(spec().registry(), "sample", "sentinel-2-l2a", "P", "red", reason)
    assert "Permission denied" in str(error) and "permissions" in str(error), error
    assert "server" not in str(error)
    # EACCES on connect (a firewall, SELinux): the machine refused the socket, no file is involved
    blocked = "Failed to connect to h.example port 443 after 0 ms: Permission denied"
    refused = access_denied(spec().registry(), "sample", "sentinel-2-l2a", "P", "red", blocked)
    assert "refused the connection" in str(refused) and "permissions" not in str(refused), refused
    web = access_denied(spec().registry(), "sample", "sentinel-2-l2a", "P", "red", "HTTP response code: 403")
    assert "(HTTP 403)" in str(web)


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/B04.tif"),
        rasterio.errors.RasterioIOError("/data/B04.tif: No such file or directory"),
        rasterio.errors.RasterioIOError(
            "'/data/B04.tif' not recognized as being in a supported file format."
        ),
        rasterio.errors.RasterioIOError("HTTP response code: 404"),
        rasterio.errors.RasterioIOError("HTTP response code: 410"),  # Gone: not there, as 404
        _answer(410),
        "TIFFReadEncodedTile() failed.",
    ],
)
def test_a_missing_or_corrupt_file_is_permanent(error: BaseException | str) -> None:
    assert not classify_error(error)[1]


def _tile_failures() -> list[tuple[BaseException, bool]]:
    from pipelines.embed.sources.catalog import AssetsUnreachableError
    from pipelines.outputs import LeaseHeldError
    from pipelines.registry.access import AccessDeniedError

    return [
        (
            rasterio.errors.RasterioIOError("/vsicurl/https://h.example/B04.tif: HTTP response code: 503"),
            True,
        ),
        (rasterio.errors.RasterioIOError("CURL error: Connection reset by peer"), True),
        (_answer(503), True),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), True),
        (LeaseHeldError("<out>/_leases/t.json is still held by another run"), True),
        (AssetsUnreachableError("1 asset(s) unreachable, e.g. A:red: HTTP response code: 503"), True),
        (rasterio.errors.RasterioIOError("HTTP response code: 403"), False),
        (_answer(403), False),
        (rasterio.errors.RasterioIOError("/data/B04.tif: Permission denied"), False),  # was: True
        (PermissionError(errno.EACCES, "Permission denied", "/data/B04.tif"), False),
        (AccessDeniedError("reading sample/sentinel-2-l2a A:red was refused (HTTP 403)"), False),
        (rasterio.errors.RasterioIOError("HTTP response code: 404"), False),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/B04.tif"), False),
        (ValueError("a bug"), False),
    ]


@pytest.mark.parametrize(("error", "retryable"), _tile_failures())
def test_a_failed_tile_says_whether_a_rerun_may_pass(error: BaseException, retryable: bool) -> None:
    """``tile_failure_retryable`` (cube and embedding tiles): a server error or no answer, whichever
    client or GDAL reported it, another run's lease, unreachable assets: a rerun may pass; a refused
    access, a missing file or a bug: no rerun passes."""
    from pipelines.cubes import tile_failure_retryable

    assert tile_failure_retryable(error) is retryable


def _unprivileged(cmd: list[str]) -> list[str]:
    """``cmd`` run so that file permissions apply (root reads a mode-000 file otherwise)."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file permissions cannot apply")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *cmd]


def test_an_unreadable_local_asset_fails_the_tile_until_it_can_be_read(tmp_path: Path) -> None:
    """A band file the run may not read (mode 000): the tile fails with no record and the run exits 1
    (before: `done`, recorded `complete` with the date left out as `Permission denied`, and every
    rerun said `already complete`), as an access denied that the flow run's retry 30 s later would
    not pass (``retryable`` false; it was true, as for an unreachable asset); once the file is
    readable the next run builds the tile whole."""
    item = s2_item(tmp_path / "items", "P")
    band = Path(item["assets"]["red"]["href"])
    nd = tmp_path / "items.ndjson"
    nd.write_text(json.dumps(item) + "\n")
    out = tmp_path / "cubes"
    cmd = aom_command(
        "cubes", "--items", str(nd), "--out", str(out), "--tile-size-m", "1920",
        "--tiles", TILE_IDS[0], "--no-progress", "--summary-json", str(tmp_path / "summary.json"),
    )  # fmt: skip
    band.chmod(0)
    try:
        run = subprocess.run(
            _unprivileged(cmd), cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=300
        )
    finally:
        band.chmod(0o644)
    assert run.returncode == 1, run.stdout + run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["done"], summary["failed"]) == (0, 1), run.stdout
    outcome = summary["outcomes"][0]
    assert "AccessDeniedError" in outcome["reason"] and "Permission denied" in outcome["reason"], outcome
    assert outcome["retryable"] is False, outcome
    assert CubeStore.open(str(out)).recorded_tiles() == []

    rerun = write_cubes([item], TILE_IDS[:1], spec(), str(out), progress=False)
    assert rerun.tiles_done == TILE_IDS[:1], rerun.format()
    record = CubeStore.open(str(out)).record(TILE_IDS[0])
    assert record["status"] == TileStatus.COMPLETE and record["skipped"] == [] and record["items"] == ["P"]


def test_file_uris_of_paths_with_spaces_and_non_ascii_characters_are_read(
    scene: dict[str, Any], built: dict[str, Any], tmp_path: Path
) -> None:
    """Items whose hrefs are ``Path.as_uri()`` of a folder named ``sp ace/ünï`` (what ``aom samples``
    and local catalogs write: ``file:///.../sp%20ace/%C3%BCn%C3%AF/...``): before, the URI reached
    GDAL undecoded, every asset was "No such file or directory" and the tiles were recorded
    ``empty`` for good. Now the tiles equal those built from plain paths."""
    folder = tmp_path / "sp ace" / "ünï"
    item = json.loads(json.dumps(scene["A"]))
    for asset in item["assets"].values():
        src = Path(asset["href"])
        dst = folder / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        asset["href"] = dst.as_uri()
    assert "%20" in item["assets"]["red"]["href"] and "%C3%BC" in item["assets"]["red"]["href"]
    out = tmp_path / "cubes"
    run = write_cubes([item, scene["B"]], TILE_IDS[:1], spec(), str(out), progress=False)
    assert run.tiles_done == TILE_IDS[:1], run.format()
    assert_stores_equal(CubeStore.open(str(out)), CubeStore.open(str(built["out"])), TILE_IDS[:1])
    assert CubeStore.open(str(out)).record(TILE_IDS[0])["skipped"] == []


def test_file_uris_become_local_paths() -> None:
    assert local_href("file:///d/sp%20ace/%C3%BCn%C3%AF/B04.tif") == "/d/sp ace/ünï/B04.tif"
    assert local_href("file://localhost/d/a%23b.tif") == "/d/a#b.tif"
    assert local_href("s3://bucket/sp%20ace/B04.tif") == "s3://bucket/sp%20ace/B04.tif"  # not a local file
    assert local_href("https://host/a%20b.tif") == "https://host/a%20b.tif"
    self_link = {"links": [{"rel": "self", "href": "file:///d/sp%20ace/item/item.json"}]}
    assert _absolute_href("../B04.tif", self_link) == "/d/sp ace/B04.tif"


@pytest.mark.parametrize(
    ("preflight", "skip_unreachable"),
    [(True, False), (False, False), (True, True)],
    ids=["at-preflight", "at-load", "skip-unreachable"],
)
def test_a_dead_asset_host_is_asked_no_more_once_a_read_of_it_failed(
    scene: dict[str, Any], tmp_path: Path, preflight: bool, skip_unreachable: bool
) -> None:
    """A2's 13 assets are on a host that answers 503 to everything; GDAL asks each request 5 times
    (the default attempts; its delays cut to 10 ms here, 7.5 s per read by default). Once a read of
    the host has spent its retries, the tile build's other reads of it fail at once, transient:
    one href asked at the preflight, one retry chain (it asks a host it has not heard from with one
    open before the others: 8 hrefs, one chain each, before); at most 8 at-load (the load's failed
    reads, then the diagnosis' first), not all 13. At-load one href may be asked twice: odc-stac's
    load does not report which hrefs it asked, so the diagnosis' first may be one of them (which
    ones the load reached depends on thread timing; seen in a CI run: B02 10 requests, B08 5): the
    error odc-stac re-raises for a 503 is GDAL's ``HTTP response code: 503``, which names no href, so
    the load cannot tell ``FailedHosts`` its host (test_hosts.py: a load error that names it). The
    tile fails unrecorded, and once the host is back the next run (same process) asks it again and
    builds the tile. Before,
    every asset waited through its own chain: 65 requests, 2 min per tile at-load with the default
    delays. With ``skip_unreachable`` every asset is asked still (an unasked one is never left out)."""
    fast = {"GDAL_HTTP_RETRY_DELAY": "0.01"}
    out = str(tmp_path / "cubes")
    tile_spec = spec(preflight=preflight, skip_unreachable=skip_unreachable)
    with serve(scene["root"], force=[503] * 10_000) as server:
        down = json.loads(json.dumps(scene["A2"]))
        for asset in down["assets"].values():
            asset["href"] = server.href(Path(asset["href"]))
        assert len(down["assets"]) == 13
        run = write_cubes([scene["A"], down], TILE_IDS[:1], tile_spec, out, progress=False, read_options=fast)
        asked: dict[str, int] = {}
        for _, path, _ in server.file_requests():
            asked[path] = asked.get(path, 0) + 1
        server.force.clear()  # the host is back
        (outcome,) = run.outcomes
        if skip_unreachable:
            assert outcome.status == TileStatus.DONE, run.format()
            assert len(asked) == 13 and {s["asset"] for s in outcome.skipped} == set(down["assets"])
            return
        assert outcome.status == TileStatus.FAILED and "13 asset(s) unreachable" in outcome.reason, (
            run.format()
        )
        if preflight:
            assert len(asked) == 1 and max(asked.values()) <= 5, asked
        else:  # the load's chains, one each, and the diagnosis' one, maybe on an href the load asked
            assert 1 <= len(asked) <= 8 and max(asked.values()) <= 10, asked
            assert sum(asked.values()) <= 5 * (len(asked) + 1), asked
        assert all(s["transient"] for s in outcome.skipped) and len(outcome.skipped) == 13
        assert any("failed earlier in this tile" in s["reason"] for s in outcome.skipped)
        assert CubeStore.open(out).recorded_tiles() == [], "a transient failure is never recorded"

        rerun = write_cubes([scene["A"], down], TILE_IDS[:1], tile_spec, out, progress=False)
    assert rerun.tiles_done == TILE_IDS[:1], rerun.format()
    assert CubeStore.open(out).record(TILE_IDS[0])["items"] == ["A", "A2"]


@pytest.mark.parametrize("remember", [True, False], ids=["tile-build", "skip-unreachable"])
def test_the_parallel_opens_of_a_dead_host_spend_one_retry_chain(
    scene: dict[str, Any], remember: bool
) -> None:
    """``open_headers`` of 13 assets on a host that answers 503 to everything, in one tile build
    (``FailedHosts``): the first open spends its retry chain (2 attempts here), the 12 others fail
    at once, transient, unasked. Before, the 8 parallel opens each spent a chain (8 hrefs asked,
    16 requests; 40 at the default 5 attempts). Without ``FailedHosts`` (``skip_unreachable``) each
    asset is asked still."""
    fast = {**read_attempts(2), "GDAL_HTTP_RETRY_DELAY": "0.01"}
    with serve(scene["root"], force=[503] * 10_000) as server:
        hrefs = [server.href(Path(a["href"])) for a in scene["A2"]["assets"].values()]
        forget_failed_reads(hrefs)
        results = open_headers(hrefs, fast, FailedHosts() if remember else None)
        asked = Counter(path for _, path, _ in server.file_requests())
    forget_failed_reads(hrefs)
    assert len(results) == 13 and all(isinstance(r, tuple) and r[1] for r in results), results
    assert max(asked.values()) <= 2, asked  # one retry chain per href at most
    if remember:
        assert len(asked) == 1, asked
        assert sum("failed earlier in this tile" in str(r) for r in results) == 12
    else:
        assert len(asked) == 13, asked


def test_a_tile_build_asks_a_host_first_only_until_it_answered() -> None:
    """``FailedHosts.first_asks``: the first href of each remote host neither answered nor failed in
    this build (local paths never), so a healthy host is asked with one open first once per build."""
    hrefs = ["/data/a.tif", "https://h1/a.tif", "https://h1/b.tif", "https://h2/a.tif", "s3://b/a.tif"]
    hosts = FailedHosts()
    assert hosts.first_asks(hrefs) == [1, 3, 4]
    hosts.answered("https://h1/x.tif")
    hosts.add("s3://b/y.tif", "HTTP response code: 503")
    assert hosts.first_asks(hrefs) == [3]
    assert hosts.check("s3://b/a.tif") and not hosts.check("https://h1/b.tif")


def test_a_failure_cached_after_the_build_dropped_it_is_asked_again(
    scene: dict[str, Any], tmp_path: Path
) -> None:
    """A read of odc-stac's still running when its build diagnosed the failed load can leave GDAL's
    /vsicurl/ cache holding the failure after the build dropped it (seen as a flaky rerun at-load):
    the next build drops it again before it reads (``reading.ask_again``), so once the host is back
    the rerun in the same process reads the asset, not GDAL's cached failure."""
    fast = {"GDAL_HTTP_RETRY_DELAY": "0.01"}
    out = str(tmp_path / "cubes")
    with serve(scene["root"], force=[503] * 10_000) as server:
        down = json.loads(json.dumps(scene["A2"]))
        for asset in down["assets"].values():
            asset["href"] = server.href(Path(asset["href"]))
        run = write_cubes([scene["A"], down], TILE_IDS[:1], spec(), out, progress=False, read_options=fast)
        assert run.tiles_failed, run.format()
        with rio_env(fast), pytest.raises(rasterio.errors.RasterioIOError):  # the late read
            rasterio.open(down["assets"]["nir"]["href"])
        server.force.clear()  # the host is back
        rerun = write_cubes([scene["A"], down], TILE_IDS[:1], spec(), out, progress=False)
    assert rerun.tiles_done == TILE_IDS[:1], rerun.format()


@pytest.mark.parametrize("at", ["waiting", "submitting"])
def test_a_sigterm_starts_no_queued_header_open(monkeypatch: pytest.MonkeyPatch, at: str) -> None:
    """``open_headers`` of 20 remote assets opens 8 at a time: a SIGTERM (the ``aom`` handler raises
    :class:`~pipelines.errors.Terminated` in the main thread) waits for the 8 running opens (threads
    are not interrupted) and starts none of the queued ones. While it waits for results,
    ``Executor.map`` cancels them itself (this held before); while map still submits (at the 10th
    here: 8 running, 2 queued) nothing did, and the pool's exit started the queued opens."""
    import threading

    import pipelines.cubes.reading as reading
    from pipelines.errors import Terminated

    hrefs = [f"https://h.example/{i}.tif" for i in range(20)]
    started: list[str] = []
    lock = threading.Lock()
    all_running, release, signal_now = threading.Event(), threading.Event(), threading.Event()

    def open_header(href: str, *args: Any) -> tuple[str, bool]:
        with lock:
            started.append(href)
            if len(started) == 8:
                all_running.set()
        assert release.wait(30)
        return "cannot open: test", False

    def on_submit(n: int) -> None:
        if at == "waiting" and n == len(hrefs):
            signal_now.set()  # the signal lands in the wait for results
        if at == "submitting" and n == 10 and all_running.wait(30):
            signal_now.set()
            wait_for_the_signal()  # ... or here, between two submits of map

    Pool = held_pool(release, on_submit)

    monkeypatch.setattr(reading, "open_header", open_header)
    monkeypatch.setattr(reading, "ThreadPoolExecutor", Pool)
    try:
        with sigterm_when(lambda: all_running.wait(30) and signal_now.wait(30)), pytest.raises(Terminated):
            open_headers(hrefs)
    finally:
        release.set()
    assert sorted(started) == sorted(hrefs[:8]), started

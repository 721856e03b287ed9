"""Reading pixels under each provider's access rule, through local servers (no internet).

A synthetic Landsat item's COGs are served by :mod:`tests.pipelines.access_servers` under the rules of
Planetary Computer (SAS token), USGS (requester pays), NASA Earthdata (bearer token) and an API-key
service (``?key=...``); the registry
file of each test points a catalog's access rule at that server. A refused read must fail the tile
without a record (retried by the next run), with a one-line hint naming the credential; signed hrefs and
tokens must never reach the store or the logs.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from pipelines.cubes import CubeSpec, CubeStore, write_cubes
from pipelines.registry import SAS_TOKENS, load_registry
from pipelines.testing import make_item
from tests.pipelines.access_servers import (
    API_KEY,
    API_KEY_ENV,
    BEARER,
    SAS_SIG,
    ProviderServer,
    registry_yaml,
    serve,
)
from tests.pipelines.cubes.support import GRID, SCENE, TILE_IDS

LANDSAT = "landsat-c2-l2"
TILE = TILE_IDS[0]


def _setup(tmp_path: Path, server: ProviderServer, catalog: str, kind: str) -> tuple[CubeSpec, list[Any]]:
    reg = tmp_path / f"{catalog}.yaml"
    reg.write_text(registry_yaml(server, catalog, kind))
    cs = load_registry([reg]).collection(LANDSAT, catalog)
    folder = server.root / ("usgs-landsat" if server.rule == "requester-pays" else "blobs")
    folder.mkdir(parents=True, exist_ok=True)
    item = make_item(folder, item_id="L", collection=LANDSAT, bounds=SCENE, spec=cs)
    for asset in item["assets"].values():
        asset["href"] = server.href(Path(asset["href"]))
    item["collection"] = LANDSAT
    spec = CubeSpec(grid=GRID, collections=(LANDSAT,), catalog=catalog, registry_files=(str(reg),))
    return spec, [item]


def _store_text(out: Path) -> str:
    return "\n".join(
        p.read_text(errors="replace") for p in out.rglob("*") if p.is_file() and p.suffix == ".json"
    )


@pytest.fixture(autouse=True)
def _fresh_tokens() -> Any:
    SAS_TOKENS.clear()
    yield
    SAS_TOKENS.clear()


def test_planetary_computer_hrefs_are_signed_in_memory_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(
        logging.INFO
    )  # rasterio's DEBUG lines name datasets by href: redacted by the CLI's log filter
    with serve(tmp_path / "root", "sas") as server:
        spec, items = _setup(tmp_path, server, "test-pc", "sas-token")
        out = tmp_path / "cubes"
        summary = write_cubes(items, [TILE], spec, str(out), progress=False)
        assert summary.tiles_done == [TILE], summary.tiles_failed
        files = server.file_requests()
        assert files and all(f"sig={SAS_SIG}" in path for _, path, _ in files)
        assert server.token_requests == 1  # one token for every asset of the collection, cached
    assert SAS_SIG not in _store_text(out)
    assert "sig=" not in items[0]["assets"]["red"]["href"]  # the caller's items stay unsigned
    assert SAS_SIG not in caplog.text
    assert not [r for r in caplog.records if r.name.startswith("pipelines") and SAS_SIG in r.getMessage()]


def test_unsigned_reads_fail_the_tile_unrecorded_with_a_hint(tmp_path: Path) -> None:
    # the catalog is declared public but the server wants a SAS token: Azure answers 409
    with serve(tmp_path / "root", "sas") as server:
        spec, items = _setup(tmp_path, server, "test-public", "anonymous")
        out = tmp_path / "cubes"
        summary = write_cubes(items, [TILE], spec, str(out), progress=False)
        reason = summary.tiles_failed[TILE]
        assert "AccessDeniedError" in reason and "HTTP 409" in reason and "public" in reason
        assert not summary.tiles_empty
        assert not CubeStore(str(out)).has_record(TILE)


def test_a_403_tile_is_retried_after_the_server_answers_200(tmp_path: Path) -> None:
    with serve(tmp_path / "root", "sas", deny=True) as server:
        spec, items = _setup(tmp_path, server, "test-pc", "sas-token")
        out = tmp_path / "cubes"
        first = write_cubes(items, [TILE], spec, str(out), progress=False)
        assert "HTTP 403" in first.tiles_failed[TILE] and "SAS token" in first.tiles_failed[TILE]
        assert not CubeStore(str(out)).has_record(TILE)
        server.deny = False  # credentials fixed / permission granted: the same process runs again
        second = write_cubes(items, [TILE], spec, str(out), progress=False)
        assert second.tiles_done == [TILE], second.tiles_failed
        assert CubeStore(str(out)).record(TILE)["status"] == "complete"


@pytest.mark.parametrize("status", [400, 405])
def test_an_answer_that_does_not_say_gone_fails_the_tile_unrecorded(tmp_path: Path, status: int) -> None:
    """HTTP 400 or 405 on an asset (a proxy, a misconfigured endpoint or signing) fails the tile
    without a record, for the next run to read the asset again; before, the asset was left out and
    the tile recorded without it, for good (416: tests/pipelines/cubes/test_reading.py)."""
    with serve(tmp_path / "root", "open") as server:
        spec, items = _setup(tmp_path, server, "test-open", "anonymous")
        out = tmp_path / "cubes"
        server.force = [status]  # the first request of one asset
        first = write_cubes(items, [TILE], spec, str(out), progress=False)
        assert f"HTTP response code: {status}" in first.tiles_failed.get(TILE, ""), first.to_dict()
        assert not CubeStore(str(out)).has_record(TILE)


@pytest.mark.parametrize("forced", [[400], [503] * 60], ids=["400-once", "503-past-the-retries"])
def test_a_tile_that_failed_is_read_again_by_a_rerun_in_the_same_process(
    tmp_path: Path, forced: list[int]
) -> None:
    """A flow's retry (or a task's) reruns failed tiles in the same process: GDAL's /vsicurl/ kept
    the failed answer of the asset, and the rerun failed again without asking the server."""
    with serve(tmp_path / "root", "open") as server:
        spec, items = _setup(tmp_path, server, "test-open", "anonymous")
        out = tmp_path / "cubes"
        fast = {"GDAL_HTTP_RETRY_DELAY": "0.01"}
        server.force = list(forced)
        first = write_cubes(items, [TILE], spec, str(out), progress=False, read_options=fast)
        assert TILE in first.tiles_failed and not CubeStore(str(out)).has_record(TILE)
        server.force = []  # the server answers again
        second = write_cubes(items, [TILE], spec, str(out), progress=False, read_options=fast)
        assert second.tiles_done == [TILE], second.tiles_failed
        record = CubeStore(str(out)).record(TILE)
        assert record["status"] == "complete" and not record.get("skipped"), record


def test_throttled_reads_are_retried(tmp_path: Path) -> None:
    with serve(tmp_path / "root", "sas") as server:
        spec, items = _setup(tmp_path, server, "test-pc", "sas-token")
        server.force = [429, 429]  # the token request and the first file read are throttled
        summary = write_cubes(items, [TILE], spec, str(tmp_path / "cubes"), progress=False)
        assert summary.tiles_done == [TILE], summary.tiles_failed


def _aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, with_key: bool) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    creds = tmp_path / "aws-credentials"
    creds.write_text(
        "[default]\naws_access_key_id = AKIDTEST\naws_secret_access_key = secret-test\n" if with_key else ""
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask an instance-metadata address


def test_requester_pays_sends_the_header_and_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _aws_env(monkeypatch, tmp_path, with_key=True)
    with serve(tmp_path / "s3", "requester-pays") as server:
        spec, items = _setup(tmp_path, server, "test-usgs", "requester-pays")
        assert items[0]["assets"]["red"]["href"].startswith("s3://usgs-landsat/")
        endpoint = {
            "AWS_S3_ENDPOINT": f"127.0.0.1:{server.port}",
            "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
        }
        summary = write_cubes(
            items, [TILE], spec, str(tmp_path / "cubes"), progress=False, read_options=endpoint
        )
        assert summary.tiles_done == [TILE], summary.tiles_failed
        files = server.file_requests()
        assert files and all(h.get("x-amz-request-payer") == "requester" for _, _, h in files)
    assert "AWS_REQUEST_PAYER" not in os.environ and "AWS_ACCESS_KEY_ID" not in os.environ


def test_requester_pays_without_credentials_says_how_to_pass_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _aws_env(monkeypatch, tmp_path, with_key=False)
    with serve(tmp_path / "s3", "requester-pays") as server:
        spec, items = _setup(tmp_path, server, "test-usgs", "requester-pays")
        out = tmp_path / "cubes"
        summary = write_cubes(items, [TILE], spec, str(out), progress=False)
        reason = summary.tiles_failed[TILE]
        assert "no AWS credentials found" in reason and "requester-pays" in reason and "AWS_PROFILE" in reason
        assert not server.file_requests() and not CubeStore(str(out)).has_record(TILE)


def test_earthdata_bearer_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("AOM_TEST_EARTHDATA_TOKEN", raising=False)
    with serve(tmp_path / "root", "bearer") as server:
        spec, items = _setup(tmp_path, server, "test-nasa", "earthdata")
        out = tmp_path / "cubes"
        missing = write_cubes(items, [TILE], spec, str(out), progress=False)
        reason = missing.tiles_failed[TILE]
        assert "AOM_TEST_EARTHDATA_TOKEN=<token>" in reason and ".netrc" in reason
        assert not CubeStore(str(out)).has_record(TILE)
        monkeypatch.setenv("AOM_TEST_EARTHDATA_TOKEN", BEARER)
        summary = write_cubes(items, [TILE], spec, str(out), progress=False)
        assert summary.tiles_done == [TILE], summary.tiles_failed
    assert BEARER not in _store_text(out)


def test_api_key_masked_in_a_saved_search_is_filled_from_the_environment_at_read_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pipelines.search import load_result, make_result, save_result

    caplog.set_level(logging.INFO)
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with serve(tmp_path / "root", "query-key") as server:
        spec, items = _setup(tmp_path, server, "test-keyed", "api-key")
        for asset in items[0]["assets"].values():  # as the catalog's API answered them
            asset["href"] += f"?key={quote(API_KEY, safe='')}"
        saved = tmp_path / "search.ndjson"
        save_result(make_result(items), str(saved))
        assert API_KEY not in saved.read_text() and quote(API_KEY, safe="") not in saved.read_text()
        loaded = [dict(i) for i in load_result(str(saved)).items]
        hrefs = [a["href"] for a in loaded[0]["assets"].values()]
        assert hrefs and all(h.endswith("?key=***") for h in hrefs)
        out = tmp_path / "cubes"

        missing = write_cubes(loaded, [TILE], spec, str(out), progress=False)
        reason = missing.tiles_failed[TILE]
        assert reason.startswith("AccessDeniedError: no API key found") and "\n" not in reason
        assert f"{API_KEY_ENV} not set" in reason and f"set {API_KEY_ENV} (query parameter 'key')" in reason
        assert not server.file_requests() and not CubeStore(str(out)).has_record(TILE)

        monkeypatch.setenv(API_KEY_ENV, "a-wrong-key")
        refused = write_cubes(loaded, [TILE], spec, str(out), progress=False)
        assert "HTTP 403" in refused.tiles_failed[TILE] and API_KEY_ENV in refused.tiles_failed[TILE]
        assert not CubeStore(str(out)).has_record(TILE)

        monkeypatch.setenv(API_KEY_ENV, API_KEY)
        before = len(server.file_requests())
        summary = write_cubes(loaded, [TILE], spec, str(out), progress=False)
        assert summary.tiles_done == [TILE], summary.tiles_failed
        files = [path for _, path, _ in server.file_requests()[before:]]
        filled = f"?key={quote(API_KEY, safe='')}"  # the placeholder filled, nothing appended
        assert files and all(path.endswith(".tif" + filled) for path in files), files[:3]
        assert [a["href"] for a in loaded[0]["assets"].values()] == hrefs  # the items stay masked
    text = _store_text(out) + json.dumps(summary.to_dict()) + summary.format() + caplog.text
    assert API_KEY not in text and quote(API_KEY, safe="") not in text and "a-wrong-key" not in text


def test_headers_of_items_without_projection_are_read_once_with_credentials_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.cubes import CubeRequest, complete_projection, plan_cubes

    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("AOM_TEST_EARTHDATA_TOKEN", BEARER)
    with serve(tmp_path / "root", "bearer") as server:
        reg = tmp_path / "nasa.yaml"
        reg.write_text(registry_yaml(server, "test-nasa", "earthdata"))
        monkeypatch.setenv("AOM_REGISTRY", str(reg))
        cs = load_registry().collection(LANDSAT, "test-nasa")
        folder = server.root / "lpdaac"
        folder.mkdir(parents=True)
        item = make_item(folder, item_id="H", collection=LANDSAT, bounds=SCENE, spec=cs, proj_style="none")
        for asset in item["assets"].values():
            asset["href"] = server.href(Path(asset["href"]))
        items_url = tmp_path / "items.ndjson"
        items_url.write_text(json.dumps(item) + "\n")
        request = CubeRequest(catalog="test-nasa", missing_proj="read_header", tile_size_m=GRID.tile_size_m)
        plan, notes = complete_projection(
            plan_cubes(request, [item]), str(items_url), str(tmp_path / "cubes")
        )
        assert "read 8 asset header(s)" in " ".join(notes)
        assert all(h.get("authorization") == f"Bearer {BEARER}" for _, _, h in server.file_requests())
        (patched,) = plan.items
        assert (
            patched["assets"]["red"]["proj:code"] == "EPSG:32631" and "proj:code" not in item["assets"]["red"]
        )
        cache = tmp_path / "items.ndjson.proj.json"
        assert cache.exists() and BEARER not in cache.read_text()
        before = len(server.file_requests())
        again, notes = complete_projection(
            plan_cubes(request, [item]), str(items_url), str(tmp_path / "cubes")
        )
        assert notes == [] and len(server.file_requests()) == before  # from the cache, no header read
        assert again.items == plan.items
        summary = write_cubes(again.items, [TILE], again.spec, str(tmp_path / "cubes"), progress=False)
        assert summary.tiles_done == [TILE], summary.tiles_failed

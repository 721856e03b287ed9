"""Search against recorded real API responses (Earth Search, Planetary Computer), replayed locally.

The recordings live outside the repository (``../shared/data/stac-items``, see its ``index.json`` for
where each came from); the tests skip with a message when they are absent. A local server
(:class:`tests.pipelines.access_servers.StacReplay`) answers with the recorded landing page,
collections and result pages, rewriting the providers' URLs to itself, so paging follows the real
``next`` links: Earth Search's POST body ``{"next": token}``, Planetary Computer's GET ``?token=`` and
CMR-STAC-style ``?cursor=`` links.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipelines.retry import RetryPolicy
from pipelines.search import SearchError, SearchRequest, load_result, save_result, search
from tests.conftest import REPO_ROOT
from tests.pipelines.access_servers import StacReplay, next_link, serve_stac

STAC_ITEMS = REPO_ROOT.parent / "shared" / "data" / "stac-items"
pytestmark = pytest.mark.skipif(
    not (STAC_ITEMS / "index.json").exists(),
    reason=f"recorded STAC items/responses not found at {STAC_ITEMS} (../shared/data/stac-items)",
)
ES = "https://earth-search.aws.element84.com/v1"
PC = "https://planetarycomputer.microsoft.com/api/stac/v1"
FAST = RetryPolicy(max_attempts=4, initial_delay_s=0.0, jitter=0.0, max_delay_s=0.0)


def _load(rel: str) -> Any:
    return json.loads((STAC_ITEMS / rel).read_text())


def _ids(pages: list[dict[str, Any]]) -> list[str]:
    return sorted(f["id"] for p in pages for f in p.get("features", []))


def test_earth_search_pages_with_post_next_tokens_and_survives_a_429() -> None:
    rec = _load("responses/es_v1_s2_landsat.json")
    pages = [p["response"] for p in rec["pages"]]
    body = rec["pages"][0]["request"]["body"]
    link = next_link(pages[0])
    assert link is not None  # the first page links to the next
    token = link["body"]["next"]
    colls = [
        _load("collections/earth-search__sentinel-2-l2a.json"),
        _load("collections/earth-search__landsat-c2-l2.json"),
    ]
    replay = StacReplay(ES, _load("landing/earth-search.json"), pages, colls, force=[429])
    request = SearchRequest(
        collections=tuple(body["collections"]),
        intersects=body["intersects"],
        datetime=body["datetime"],
        catalog="earth-search",
    )
    with serve_stac(replay) as server:
        result = search(request, catalog_url=server.url, retry=FAST)
    assert sorted(i["id"] for i in result.items) == _ids(pages) and len(result.items) == 2
    posted = [b for method, _, b in replay.requests if method == "POST"]
    assert posted[-1].get("next") == token  # the second page was asked for with the recorded token


def test_planetary_computer_pages_with_get_tokens() -> None:
    rec = _load("responses/pc_landsat_items_get.json")
    pages = [p["response"] for p in rec["pages"]]
    link = next_link(pages[0])
    assert link is not None  # the first page links to the next
    token = link["href"].split("token=")[1]
    replay = StacReplay(
        PC,
        _load("landing/planetary-computer.json"),
        pages,
        [_load("collections/planetary-computer__landsat-c2-l2.json")],
    )
    with serve_stac(replay) as server:
        result = search(
            SearchRequest(("landsat-c2-l2",), catalog="planetary-computer"),
            catalog_url=server.url,
            retry=FAST,
        )
    assert sorted(i["id"] for i in result.items) == _ids(pages) and len(result.items) == 10
    assert any(method == "GET" and f"token={token}" in path for method, path, _ in replay.requests)
    assert "sas-token" in " ".join(result.notes)  # the result says how its hrefs get signed


def test_cursor_paging_returns_every_item(tmp_path: Path) -> None:
    # CMR-STAC pages with an opaque ?cursor= in GET next links; pages built from real PC items
    features = _load("responses/pc_landsat_items_get.json")["pages"][0]["response"]["features"]
    pages = []
    for n, start in enumerate(range(0, len(features), 4)):
        page: dict[str, Any] = {
            "type": "FeatureCollection",
            "features": features[start : start + 4],
            "links": [],
        }
        if start + 4 < len(features):
            page["links"].append({"rel": "next", "method": "GET", "href": f"{PC}/search?cursor=opaque-{n}"})
        pages.append(page)
    replay = StacReplay(
        PC,
        _load("landing/planetary-computer.json"),
        pages,
        [_load("collections/planetary-computer__landsat-c2-l2.json")],
    )
    with serve_stac(replay) as server:
        result = search(
            SearchRequest(("landsat-c2-l2",), catalog="planetary-computer"),
            catalog_url=server.url,
            retry=FAST,
        )
    assert sorted(i["id"] for i in result.items) == sorted(f["id"] for f in features)
    assert sum("cursor=" in path for _, path, _ in replay.requests) == len(pages) - 1
    save_result(result, str(tmp_path / "r"))


def test_partial_items_without_geometry_are_saved(tmp_path: Path) -> None:
    rec = _load("responses/es_v1_c1_fields.json")
    pages = [p["response"] for p in rec["pages"]]
    assert all("geometry" not in f for f in pages[0]["features"])
    replay = StacReplay(
        ES,
        _load("landing/earth-search.json"),
        pages,
        [_load("collections/earth-search__sentinel-2-c1-l2a.json")],
    )
    with serve_stac(replay) as server:
        result = search(
            SearchRequest(("sentinel-2-c1-l2a",), catalog="earth-search"), catalog_url=server.url, retry=FAST
        )
    assert len(result.items) == len(pages[0]["features"])
    save_result(result, str(tmp_path / "partial.ndjson"))
    assert load_result(str(tmp_path / "partial.ndjson")).items == result.items
    with pytest.raises(
        SearchError, match=r"no geometry .* save them as \.ndjson"
    ):  # was KeyError: 'geometry'
        save_result(result, str(tmp_path / "partial.parquet"))

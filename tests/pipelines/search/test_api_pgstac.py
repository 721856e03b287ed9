"""The two backends agree: a real stac-fastapi-pgstac API (through pystac-client) and the local
backend (static catalog, stac-geoparquet, ndjson) return the same items for the same request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines.retry import RetryPolicy
from pipelines.search import (
    SearchRequest,
    SearchResult,
    canonical_item,
    load_result,
    new_items,
    save_result,
    search,
)
from tests.pipelines.search.support import HLS, LS, S2, all_items, collections_of

pytestmark = pytest.mark.integration

FORMATS = ("static", "ndjson", "parquet")
AOI = (5.5, 44.8, 6.5, 45.2)
YEAR = "2023-01-01/2023-12-31"
RETRY = RetryPolicy(max_attempts=3, initial_delay_s=0.05, timeout_s=30)

REQUESTS: dict[str, dict[str, Any]] = {
    "bbox-datetime-collections": {"collections": (S2, LS), "bbox": AOI, "datetime": YEAR},
    "max-cloud": {"collections": (S2, LS), "bbox": AOI, "datetime": YEAR, "max_cloud_cover": 20},
    "dict-query": {"collections": (S2, LS, HLS), "bbox": AOI, "query": {"eo:cloud_cover": {"lte": 10}}},
    "cql2-filter": {
        "collections": (S2, LS, HLS),
        "bbox": AOI,
        "datetime": YEAR,
        "filter": {
            "op": "and",
            "args": [
                {"op": "=", "args": [{"property": "platform"}, "sentinel-2a"]},
                {"op": "<", "args": [{"property": "eo:cloud_cover"}, 25]},
            ],
        },
    },
    "cql2-spatial-temporal": {
        "collections": (),
        "filter": {
            "op": "and",
            "args": [
                {
                    "op": "s_intersects",
                    "args": [{"property": "geometry"}, {"type": "Point", "coordinates": [6.5, 45.0]}],
                },
                {
                    "op": "t_intersects",
                    "args": [
                        {"property": "datetime"},
                        {"interval": ["2023-01-01T00:00:00Z", "2023-06-30T23:59:59Z"]},
                    ],
                },
            ],
        },
    },
    "utm-boundary": {"collections": (S2,), "bbox": (5.8, 44.9, 6.2, 45.1), "datetime": YEAR},
    "antimeridian": {"collections": (S2,), "bbox": (179.0, -18.0, -179.0, -16.0)},
    "updated-since": {"collections": (S2, LS, HLS), "updated_since": "2023-06-01T00:00:00Z"},
    "intersects": {"collections": (S2, LS), "intersects": {"type": "Point", "coordinates": [5.5, 45.0]}},
    "empty": {"collections": (S2,), "bbox": AOI, "datetime": "2019-01-01/2019-12-31"},
}


def _load(api: Any, collections: list[dict], items: list[dict]) -> None:
    api.reset()
    api.load_collections(collections)
    api.load_items(items)


def _same(a: SearchResult, b: SearchResult) -> None:
    assert a.ids == b.ids
    # beyond ids: the same content, navigation links (which name the server) aside
    assert [canonical_item(i) for i in a.items] == [canonical_item(i) for i in b.items]
    assert a.content_hash == b.content_hash


@pytest.fixture(scope="class")
def setup(pgstac_api: Any, search_catalog: dict[str, Path]) -> Iterator[tuple[str, dict[str, Path]]]:
    """The controlled items in pgstac and in the three local formats (per class: pgstac is shared)."""
    items = all_items()
    _load(pgstac_api, collections_of(items), items)
    yield pgstac_api.url, search_catalog
    pgstac_api.reset()


@pytest.fixture(scope="class")
def sample(pgstac_api: Any, sample_catalog: Any) -> Iterator[tuple[str, Any]]:
    """The embedded sample catalog (pipelines.samples, the shared session build) loaded into pgstac."""
    sc = sample_catalog
    items = [json.loads(line) for line in sc.items_ndjson.read_text().splitlines() if line.strip()]
    collections = [json.loads((sc.root / c / "collection.json").read_text()) for c in sc.collections]
    _load(pgstac_api, collections, items)
    yield pgstac_api.url, sc
    pgstac_api.reset()


class TestControlledItems:
    @pytest.mark.parametrize("name", sorted(REQUESTS))
    def test_api_and_local_formats_agree(self, setup: tuple[str, dict[str, Path]], name: str) -> None:
        api_url, sources = setup
        request = SearchRequest(**REQUESTS[name])
        remote = search(request, catalog_url=api_url, retry=RETRY)
        for fmt in FORMATS:
            _same(remote, search(request, catalog_url=str(sources[fmt])))
        if name == "empty":
            assert remote.items == () and any(n.startswith("no items matched") for n in remote.notes)
        else:
            assert remote.items, f"request {name} should find something"

    def test_max_items_through_the_api(self, setup: tuple[str, dict[str, Path]]) -> None:
        api_url, sources = setup
        request = SearchRequest((S2,), bbox=AOI, max_items=2)
        remote = search(request, catalog_url=api_url, retry=RETRY)
        local = search(request, catalog_url=str(sources["parquet"]))
        assert len(remote.items) == 2
        assert remote.ids == local.ids  # the API sorts newest first, the local backend keeps the newest

    def test_api_result_round_trips_and_is_stable(
        self, setup: tuple[str, dict[str, Path]], tmp_path: Path
    ) -> None:
        api_url, _ = setup
        request = SearchRequest((S2, LS), bbox=AOI, datetime=YEAR)
        first = search(request, catalog_url=api_url, retry=RETRY)
        again = search(request, catalog_url=api_url, retry=RETRY)
        assert first.content_hash == again.content_hash
        save_result(first, str(tmp_path / "r.parquet"))
        assert load_result(str(tmp_path / "r.parquet")).content_hash == first.content_hash


class TestIncrementalAgainstTheApi:
    def test_updated_items_show_up_as_new(self, pgstac_api: Any) -> None:
        items = all_items()
        _load(pgstac_api, collections_of(items), items)
        try:
            request = SearchRequest((S2,), bbox=AOI)
            before = search(request, catalog_url=pgstac_api.url, retry=RETRY)
            changed = next(i for i in items if i["id"] == "S2A_31TGL_20230105")
            changed = json.loads(json.dumps(changed))
            changed["properties"]["updated"] = "2024-05-01T00:00:00Z"
            changed["properties"]["eo:cloud_cover"] = 2.0
            pgstac_api.load_items([changed])
            after = search(request, catalog_url=pgstac_api.url, retry=RETRY)
            assert after.content_hash != before.content_hash
            assert [i["id"] for i in new_items(after, before)] == ["S2A_31TGL_20230105"]
            since = search(
                SearchRequest((S2,), bbox=AOI, updated_since="2024-04-01T00:00:00Z"),
                catalog_url=pgstac_api.url,
                retry=RETRY,
            )
            assert since.ids == ("S2A_31TGL_20230105",)
        finally:
            pgstac_api.reset()


class TestSampleCatalog:
    """The embedded sample catalog (pipelines.samples) through all four readers."""

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"collections": (S2, LS), "bbox": (5.9, 44.9, 6.1, 45.1), "datetime": YEAR},
            {"collections": (S2, LS, HLS, "hls2-l30"), "bbox": (5.9, 44.9, 6.1, 45.1), "max_cloud_cover": 30},
            {"collections": (), "query": {"eo:cloud_cover": {"lte": 50}}},
            {"collections": (LS,)},
        ],
        ids=["s2-landsat-2023", "max-cloud", "query-only", "one-collection"],
    )
    def test_sample_catalog_same_items_everywhere(
        self, sample: tuple[str, Any], kwargs: dict[str, Any]
    ) -> None:
        api_url, sc = sample
        request = SearchRequest(**kwargs)
        remote = search(request, catalog_url=api_url, retry=RETRY)
        assert remote.items
        for path in (sc.catalog_json, sc.items_ndjson, sc.items_parquet):
            _same(remote, search(request, catalog_url=str(path)))

    def test_sample_aoi_across_the_utm_boundary_finds_both_zones(self, sample: tuple[str, Any]) -> None:
        _, sc = sample
        result = search(SearchRequest((S2,), bbox=(5.9, 44.9, 6.1, 45.1)), catalog_url=str(sc.items_parquet))
        zones = set(result.count_by_epsg)
        assert {"32631", "32632"} <= zones

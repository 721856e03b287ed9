"""Retries: the policy itself, and the STAC API backend against a tiny local HTTP server that answers
429 then 200, 500 forever, or too slowly. Never the internet."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pipelines.errors import EXIT_FAILED, EXIT_USAGE
from pipelines.retry import RetryError, RetryPolicy, call_with_retry
from pipelines.search import (
    CatalogUnavailableError,
    SearchError,
    SearchRequest,
    UnknownCollectionError,
    search,
)
from tests.pipelines.search.support import LS, S2, FakeStacApi, fake_api, utm_items

AOI = (5.5, 44.8, 6.5, 45.2)
FAST = RetryPolicy(max_attempts=4, initial_delay_s=0.01, max_delay_s=0.05, timeout_s=5.0)


# ------------------------------------------------------------------------------------------ the policy


def test_delays_grow_exponentially_capped_and_jittered_reproducibly() -> None:
    p = RetryPolicy(max_attempts=6, initial_delay_s=1.0, multiplier=2.0, max_delay_s=5.0, jitter=0.0)
    assert list(p.delays()) == [1.0, 2.0, 4.0, 5.0, 5.0]
    j = RetryPolicy(max_attempts=6, initial_delay_s=1.0, max_delay_s=5.0, jitter=0.5)
    a = list(j.delays(random.Random(7)))
    b = list(j.delays(random.Random(7)))
    assert a == b  # same RNG seed, same jitter
    assert all(0.5 * base <= d <= base for d, base in zip(a, [1.0, 2.0, 4.0, 5.0, 5.0]))
    assert a != list(j.delays(random.Random(8)))
    # Retry-After wins when longer (capped at max_delay_s)
    assert p.delay(1, retry_after=3.0) == 3.0
    assert p.delay(1, retry_after=60.0) == 5.0


def test_call_with_retry_succeeds_after_transient_failures() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=5, initial_delay_s=0.1, jitter=0.0, sleep=sleeps.append)
    calls: list[Exception | str] = [TimeoutError("slow"), ConnectionError("reset"), "ok"]

    def fn() -> str:
        value = calls.pop(0)
        if isinstance(value, Exception):
            raise value
        return value

    assert call_with_retry(fn, policy=policy, is_retryable=lambda e: True, describe="x") == "ok"
    assert sleeps == [0.1, 0.2]


def test_call_with_retry_is_bounded_and_does_not_retry_permanent_errors() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=3, initial_delay_s=0.1, jitter=0.0, sleep=sleeps.append)
    n = 0

    def always() -> None:
        nonlocal n
        n += 1
        raise TimeoutError("still slow")

    with pytest.raises(RetryError, match="GET thing failed after 3 attempt") as info:
        call_with_retry(
            always, policy=policy, is_retryable=lambda e: isinstance(e, TimeoutError), describe="GET thing"
        )
    assert n == 3 and info.value.attempts == 3 and isinstance(info.value.last, TimeoutError)

    def permanent() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        call_with_retry(permanent, policy=policy, is_retryable=lambda e: isinstance(e, TimeoutError))


def test_retry_time_budget() -> None:
    policy = RetryPolicy(
        max_attempts=10, initial_delay_s=1.0, jitter=0.0, max_elapsed_s=2.5, sleep=lambda s: None
    )

    def fail() -> None:
        raise TimeoutError("x")

    with pytest.raises(RetryError, match="time budget"):
        call_with_retry(fail, policy=policy, is_retryable=lambda e: True)


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=1.5)


# ------------------------------------------------------------------------------------------ the API backend


def test_api_search_pages_and_filters_in_process_what_the_server_ignores() -> None:
    with fake_api(utm_items(), page_size=2) as api:
        result = search(
            SearchRequest((S2, LS), bbox=AOI, datetime="2023", max_cloud_cover=20),
            catalog_url=api.url,
            retry=FAST,
        )
        pages = list(api.bodies)
    # the fake server ignores everything but collections; the client re-applies the predicates
    assert set(result.ids) == {
        "S2A_31TGL_20230105",
        "S2A_31TGL_20230620",
        "S2B_32TLR_20230105",
        "S2B_32TLR_20230710",
        "LC09_196029_20230210",
    }
    assert len(pages) > 2  # paged through next links
    first = pages[0]
    assert first["query"] == {"eo:cloud_cover": {"lte": 20.0}}  # dict form: a number, not "20"
    assert first["bbox"] == list(AOI)
    assert first["datetime"].startswith("2023-01-01T00:00:00Z/2023-12-31T23:59:59")


def test_api_without_query_or_filter_support_gets_neither() -> None:
    with fake_api(utm_items(), conforms=("core", "item-search")) as api:
        result = search(
            SearchRequest(
                (S2,),
                bbox=AOI,
                max_cloud_cover=10,
                filter={"op": "like", "args": [{"property": "id"}, "S2B%"]},
            ),
            catalog_url=api.url,
            retry=FAST,
        )
        body = api.bodies[0]
    assert "query" not in body and "filter" not in body
    assert set(result.ids) == {"S2B_32TLR_20230105", "S2B_32TLR_20230710", "S2B_32TLR_20240110"}
    assert any("query extension" in n for n in result.notes)
    assert any("CQL2" in n for n in result.notes)


def test_api_antimeridian_bbox_is_searched_as_two_boxes() -> None:
    from tests.pipelines.search.support import antimeridian_items

    with fake_api(antimeridian_items()) as api:
        result = search(
            SearchRequest((S2,), bbox=(179.0, -18.0, -179.0, -16.0)), catalog_url=api.url, retry=FAST
        )
        bboxes = [b["bbox"] for b in api.bodies if "token" not in b]
    assert bboxes == [[179.0, -18.0, 180.0, -16.0], [-180.0, -18.0, -179.0, -16.0]]
    assert set(result.ids) == {"S2A_60KWF_20230301", "S2A_01KAA_20230301", "S2A_60KZF_20230301"}


def test_429_then_200_succeeds_after_retry() -> None:
    with fake_api(utm_items(), fail_first=[429, 429, 0, 429], retry_after="0") as api:
        result = search(SearchRequest((LS,), bbox=AOI), catalog_url=api.url, retry=FAST)
        statuses = len(api.requests)
    assert set(result.ids) == {"LC09_196029_20230210", "LC08_196029_20230922"}
    assert statuses >= 5  # 2 x 429 on the landing page, 1 x 429 on the search


def test_500_forever_fails_after_bounded_retries_naming_the_url_without_credentials() -> None:
    with fake_api(utm_items(), fail_always=500) as api:
        host = api.url.split("://", 1)[1]
        url = f"http://alice:s3cr3t@{host}/?token=abc123"
        with pytest.raises(SearchError) as info:
            search(SearchRequest((S2,), bbox=AOI), catalog_url=url, retry=FAST)
        n_requests = len(api.requests)
    message = str(info.value)
    assert isinstance(info.value, CatalogUnavailableError) and info.value.exit_code == EXIT_FAILED
    assert n_requests == FAST.max_attempts  # bounded
    assert "after 4 attempt(s)" in message and "HTTP 500" in message
    assert host in message
    assert "s3cr3t" not in message and "abc123" not in message


def test_client_error_is_not_retried() -> None:
    with fake_api(utm_items(), fail_always=400) as api:
        with pytest.raises(SearchError, match="rejected: HTTP 400") as info:
            search(SearchRequest((S2,), bbox=AOI), catalog_url=api.url, retry=FAST)
        assert info.value.exit_code == EXIT_USAGE  # a request the API refuses: bad input
        assert len(api.requests) == 1


def test_timeout_is_retried() -> None:
    """A request the API does not answer within ``timeout_s`` fails and is sent again. (Client.open
    reset the policy's timeout to none: the search waited for the held answer however long it took,
    and this test passed only because the hold was shorter than the test's patience.)"""
    policy = RetryPolicy(max_attempts=3, initial_delay_s=0.01, timeout_s=2.0)  # generous: a loaded machine
    with fake_api(utm_items(), delay_first=30.0) as api:
        result = search(SearchRequest((LS,), bbox=AOI), catalog_url=api.url, retry=policy)
        assert not api.first_answered.is_set()  # done without the held answer
    assert len(result.items) == 2
    assert api.requests[0] == api.requests[1]  # the request that timed out was sent again


def test_unreachable_api_is_a_clear_error() -> None:
    from tests.services.ports import free_port

    url = f"http://127.0.0.1:{free_port()}/stac"
    with pytest.raises(CatalogUnavailableError, match=r"127\.0\.0\.1.*after 2 attempt") as info:
        search(SearchRequest((S2,)), catalog_url=url, retry=RetryPolicy(max_attempts=2, initial_delay_s=0.01))
    assert info.value.exit_code == EXIT_FAILED  # a run that failed (retried next run), not bad input


def test_api_search_of_a_collection_the_api_lacks_is_bad_input_naming_what_it_serves() -> None:
    missing = pytest.raises(UnknownCollectionError, match=r"sentinel-1-grd not served by .*it serves: ")
    with fake_api(utm_items()) as api, missing as e:
        search(SearchRequest(("sentinel-1-grd",), bbox=AOI), catalog_url=api.url, retry=FAST)
    assert e.value.exit_code == EXIT_USAGE and S2 in str(e.value)


# ------------------------------------------------------------------------------------------ paging faults


class _FaultyPager(FakeStacApi):
    """A fake API whose second page (token 2) misbehaves: ``empty`` (no features but a next link),
    ``error-body`` (HTTP 200 with an error object), ``not-json`` (HTTP 200, a cut HTML body, once),
    ``loop`` (every next link points back at page 2)."""

    def __init__(self, fault: str, **kwargs: Any) -> None:
        super().__init__(utm_items(), page_size=2, **kwargs)
        self.fault = fault
        self.garbled = 0

    def __enter__(self) -> _FaultyPager:
        super().__enter__()
        return self

    def _page(self, body: dict) -> dict:
        page = super()._page(body)
        token = int(body.get("token") or 0)
        if self.fault == "empty" and token == 2:
            return {"type": "FeatureCollection", "features": [], "links": page["links"]}
        if self.fault == "error-body" and token == 2:
            return {"code": "Timeout", "description": "upstream timed out"}
        if self.fault == "loop" and token >= 2:
            for link in page["links"]:
                link["body"]["token"] = 2
        return page

    def _send(self, h: Any, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        page = body.get("type") == "FeatureCollection" and self.bodies
        if self.fault == "not-json" and page and not self.garbled and self.bodies[-1].get("token") == 2:
            self.garbled += 1
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", "6")
            h.end_headers()
            h.wfile.write(b"<html>")
            return
        super()._send(h, status, body, headers)


def _all_ids() -> set[str]:
    return {i["id"] for i in utm_items() if i["collection"] in (S2, LS)}


def test_a_200_error_body_mid_pagination_is_a_failure_not_a_shorter_result() -> None:
    with _FaultyPager("error-body") as api, pytest.raises(CatalogUnavailableError, match="page 2") as info:
        search(SearchRequest((S2, LS)), catalog_url=api.url, retry=FAST)
    assert info.value.exit_code == EXIT_FAILED


def test_a_next_link_that_loops_fails_instead_of_paging_forever() -> None:
    with _FaultyPager("loop") as api, pytest.raises(CatalogUnavailableError, match="paging loops"):
        search(SearchRequest((S2, LS)), catalog_url=api.url, retry=FAST)


def test_an_empty_page_with_a_next_link_is_followed() -> None:
    with _FaultyPager("empty") as api:
        result = search(SearchRequest((S2, LS)), catalog_url=api.url, retry=FAST)
    served = [i["id"] for i in utm_items() if i["collection"] in (S2, LS)]
    # pystac-client stopped at the empty page 2: only page 1 came back, as a complete result
    assert set(result.ids) == set(served[:2] + served[4:])  # page 2 was empty on the server


def test_a_page_that_is_not_json_is_retried() -> None:
    with _FaultyPager("not-json") as api:
        result = search(SearchRequest((S2, LS)), catalog_url=api.url, retry=FAST)
        assert api.garbled == 1
    assert set(result.ids) == _all_ids()

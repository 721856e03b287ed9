"""The STAC API backend: pystac-client with per-request retries, paging and capability checks.

Every HTTP request (landing page, each search page) goes through :class:`RetryingStacApiIO`:
429 / 5xx / timeouts / connection errors (:func:`~pipelines.retry.is_transient`) are retried with
backoff (``Retry-After`` honoured) under a :class:`~pipelines.retry.RetryPolicy`; when retries run out, or the server rejects the
request, a :class:`SearchError` names the URL with credentials removed.

``query`` is sent in dict form only (the list form sends numbers as strings) and only when the
API conforms to the query extension; CQL2-JSON ``filter`` only when it conforms to the filter
extension. Whatever the server could not apply is applied in process by the caller's
``accept`` predicate, which is applied to every returned item anyway.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO

from pipelines.retry import HTTPFailure, RetryError, RetryPolicy, call_with_retry, is_transient
from pipelines.search.filters import CatalogUnavailableError, SearchError
from pipelines.storage import redact_url

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


class RetryingStacApiIO(StacApiIO):
    """``StacApiIO`` whose every request is retried under a :class:`RetryPolicy`.

    urllib3's own retries are switched off so there is one retry loop with one budget.
    """

    def __init__(self, retry: RetryPolicy, headers: dict[str, str] | None = None) -> None:
        self.retry = retry  # before StacApiIO.__init__, which calls update()
        super().__init__(headers=headers, timeout=retry.timeout_s, max_retries=None)
        self._last_response: requests.Response | None = None
        self.attempts = 0
        self.session.hooks["response"].append(self._remember)

    def update(
        self,
        headers: dict[str, str] | None = None,
        parameters: dict[str, Any] | None = None,
        request_modifier: Callable[[requests.Request], requests.Request | None] | None = None,
        timeout: Any = None,
    ) -> None:
        """``StacApiIO.update``, keeping the policy's per-request timeout when given none.
        (``Client.open`` passes ``timeout=None``, which left every request without a timeout: an API
        that accepted the connection and never answered hung the search for good, never retried.)"""
        keep = self.retry.timeout_s if timeout is None else timeout
        super().update(headers, parameters, request_modifier, keep)

    def _remember(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._last_response = response

    def request(
        self,
        href: str,
        method: str | None = None,
        headers: dict[str, str] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> str:
        describe = f"STAC API request {(method or 'GET').upper()} {redact_url(href)}"
        parent_request = super().request

        def once() -> str:
            self._last_response = None
            self.attempts += 1
            try:
                text = str(parent_request(href, method=method, headers=headers, parameters=parameters))
            except APIError as exc:
                resp = self._last_response
                status = getattr(exc, "status_code", None) or (resp.status_code if resp is not None else None)
                if resp is not None and not 200 <= resp.status_code < 300:
                    status = resp.status_code
                retry_after = _retry_after(resp) if resp is not None else None
                body = str(exc).strip().replace("\n", " ")[:300]
                what = f"HTTP {status}" if status is not None else "transport error"
                raise HTTPFailure(status, f"{what}: {body}" if body else what, retry_after) from exc
            try:  # a 200 whose body is cut short or is an HTML error page is a failed attempt too
                json.loads(text)
            except ValueError as exc:
                raise HTTPFailure(None, f"HTTP 200 with a body that is not JSON: {text[:100]!r}") from exc
            return text

        try:
            return call_with_retry(
                once,
                policy=self.retry,
                is_retryable=is_transient,
                retry_after=lambda e: getattr(e, "retry_after", None),
                describe=describe,
            )
        except RetryError as exc:
            raise CatalogUnavailableError(str(exc)) from exc
        except HTTPFailure as exc:
            raise SearchError(f"{describe} was rejected: {exc}") from exc

    def get_pages(
        self, url: str, method: str | None = None, parameters: dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """The pages of a paging endpoint (``/search``, ``/collections``), strictly.

        pystac-client's own pager ends the search quietly at the first page without features (also
        a 200 error body, or an empty page that still links to a next one) and follows a ``next``
        link that repeats forever. Here a page that is not a feature/collection page, or a ``next``
        link seen before, raises :class:`CatalogUnavailableError` (the result would be incomplete);
        an empty page with a ``next`` link is followed; the search ends at a page without one.
        """
        from pystac import Link

        page = self.read_json(url, method=method, parameters=parameters)
        followed: set[str] = set()
        number = 1
        while True:
            features = page.get("features") if isinstance(page, dict) else None
            if not isinstance(features, list) and isinstance(page, dict):
                features = page.get("collections")
            if not isinstance(features, list):
                shape = sorted(page) if isinstance(page, dict) else type(page).__name__
                raise CatalogUnavailableError(
                    f"STAC API {redact_url(url)} page {number} is not a feature collection "
                    f"(got {shape}); the result would be incomplete"
                )
            if features:
                yield page
            next_link = next(
                (
                    link
                    for link in page.get("links") or []
                    if isinstance(link, dict) and link.get("rel") == "next"
                ),
                None,
            )
            if next_link is None:
                return
            key = json.dumps(next_link, sort_keys=True, default=str)
            if key in followed:
                raise CatalogUnavailableError(
                    f"STAC API {redact_url(url)} paging loops: the next link of page {number} repeats "
                    "an earlier one; the result would be incomplete"
                )
            followed.add(key)
            number += 1
            page = self.read_json(Link.from_dict(next_link), parameters=parameters)


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


@dataclass
class ApiOutcome:
    items: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    requests: int = 0
    known_collections: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ApiQuery:
    """What to ask the server for (the caller re-checks every item with its own predicates)."""

    collections: tuple[str, ...] = ()
    bboxes: tuple[tuple[float, float, float, float], ...] = ()
    intersects: Mapping[str, Any] | None = None
    datetime: str | None = None
    query: Mapping[str, Any] | None = None
    filter: Mapping[str, Any] | None = None
    page_size: int = 100


def open_client(
    url: str, retry: RetryPolicy, headers: dict[str, str] | None = None
) -> tuple[Any, RetryingStacApiIO]:
    from pystac_client import Client

    io = RetryingStacApiIO(retry, headers=headers)
    try:
        client = Client.open(url, stac_io=io)
    except SearchError:
        raise
    except Exception as exc:
        raise SearchError(f"cannot open STAC API {redact_url(url)}: {type(exc).__name__}: {exc}") from exc
    return client, io


def api_search(
    url: str,
    q: ApiQuery,
    *,
    accept: Callable[[Mapping[str, Any]], bool],
    max_items: int | None,
    retry: RetryPolicy,
    progress: Progress | None = None,
    headers: dict[str, str] | None = None,
) -> ApiOutcome:
    """Run the search (once per bbox: two for a bbox across the antimeridian) and collect items.

    Stops reading pages once ``max_items`` accepted items were collected from a sub-search.
    """
    from pystac_client.conformance import ConformanceClasses

    client, io = open_client(url, retry, headers)
    out = ApiOutcome()
    if not client.conforms_to(ConformanceClasses.ITEM_SEARCH):
        raise SearchError(f"{redact_url(url)} does not conform to STAC API item-search; cannot search it")
    kwargs: dict[str, Any] = {"method": "POST", "limit": q.page_size}
    if q.collections:
        kwargs["collections"] = list(q.collections)
    if q.datetime:
        kwargs["datetime"] = q.datetime
    if q.query:
        if client.conforms_to(ConformanceClasses.QUERY):
            kwargs["query"] = dict(q.query)  # dict form: numbers stay numbers
        else:
            out.notes.append(f"{redact_url(url)} does not support the query extension; applied it in process")
    if q.filter:
        if client.conforms_to(ConformanceClasses.FILTER):
            kwargs["filter"] = dict(q.filter)
            kwargs["filter_lang"] = "cql2-json"
        else:
            out.notes.append(
                f"{redact_url(url)} does not support CQL2 filters; applied the filter in process"
            )
    if client.conforms_to(ConformanceClasses.SORT):
        kwargs["sortby"] = [{"field": "properties.datetime", "direction": "desc"}]

    spatial: list[dict[str, Any]] = []
    if q.intersects is not None:
        spatial.append({"intersects": dict(q.intersects)})
    elif q.bboxes:
        spatial.extend({"bbox": list(b)} for b in q.bboxes)
    else:
        spatial.append({})

    seen: set[tuple[str, str]] = set()
    for part in spatial:
        taken = 0
        for item in _items(client, {**kwargs, **part}, url):
            if progress is not None:
                progress(1)
            key = (str(item.get("collection") or ""), str(item.get("id")))
            if key in seen or not accept(item):
                continue
            seen.add(key)
            out.items.append(item)
            taken += 1
            if max_items is not None and taken >= max_items:
                break
    out.requests = io.attempts
    if not out.items:
        out.known_collections = _collection_ids(client)
    return out


def _items(client: Any, kwargs: dict[str, Any], url: str) -> Iterator[dict[str, Any]]:
    try:
        search = client.search(**kwargs)
        yield from search.items_as_dicts()
    except SearchError:
        raise
    except NotImplementedError as exc:  # pystac-client DoesNotConformTo
        raise SearchError(f"{redact_url(url)}: {exc}") from exc
    except APIError as exc:
        raise CatalogUnavailableError(f"STAC API {redact_url(url)} failed: {exc}") from exc


def _collection_ids(client: Any) -> tuple[str, ...] | None:
    """Collection ids the API serves (only used to explain an empty result; failures ignored)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pystac-client warns when it falls back to crawling
            return tuple(sorted(c.id for c in client.get_collections()))
    except Exception as exc:
        log.debug("could not list collections: %s", exc)
        return None

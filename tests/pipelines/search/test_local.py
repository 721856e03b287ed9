"""pipelines.search.local over HTTP: a static catalog served by a local server that fails on purpose.

Reading a catalog retries what :func:`pipelines.retry.is_transient` calls transient (HTTP 503 was
not retried before: the one rule now decides), and fails at once, as a failure and never as an
empty result, on a refusal (HTTP 403)."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pipelines.retry import RetryPolicy
from pipelines.search.filters import CatalogUnavailableError, SearchError
from pipelines.search.local import iter_items
from tests.pipelines.search.support import S2, make_item, write_static_catalog

FAST = RetryPolicy(max_attempts=3, initial_delay_s=0.0, max_delay_s=0.0, jitter=0.0, timeout_s=10.0)
ITEMS = [make_item(f"S2A_{n}", S2, (5.0, 44.5, 5.9, 45.5), "2023-01-05T10:30:00Z") for n in range(3)]


class _Server:
    """Serves a folder; ``fail[path]`` is the list of statuses the next requests of ``path`` get
    (one each) before it is served; ``requests`` counts the requests per path."""

    def __init__(self, root: Path) -> None:
        self.fail: dict[str, list[int]] = {}
        self.requests: Counter[str] = Counter()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                server.requests[path] += 1
                pending = server.fail.get(path)
                if pending:
                    self.send_error(pending.pop(0))
                    return
                super().do_GET()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@contextlib.contextmanager
def _serve(root: Path) -> Iterator[_Server]:
    server = _Server(root)
    thread = threading.Thread(target=server.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        thread.join(5)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[_Server]:
    write_static_catalog(ITEMS, tmp_path / "static")
    with _serve(tmp_path / "static") as server:
        yield server


def _ids(url: str, retry: RetryPolicy = FAST) -> list[str]:
    return sorted(i["id"] for i in iter_items(url, retry=retry))


def test_a_catalog_that_answers_503_once_is_read_on_the_retry(served: _Server) -> None:
    served.fail["/catalog.json"] = [503]
    assert _ids(f"{served.url}/catalog.json") == sorted(i["id"] for i in ITEMS)
    assert served.requests["/catalog.json"] == 2


def test_an_item_that_answers_503_once_is_read_on_the_retry(served: _Server) -> None:
    item = f"/{S2}/S2A_1/S2A_1.json"
    served.fail[item] = [503]
    assert _ids(f"{served.url}/catalog.json") == sorted(i["id"] for i in ITEMS)
    assert served.requests[item] == 2


def test_a_catalog_still_answering_503_fails_after_max_attempts(served: _Server) -> None:
    served.fail["/catalog.json"] = [503] * 10
    with pytest.raises(CatalogUnavailableError, match="3 attempt"):
        _ids(f"{served.url}/catalog.json")
    assert served.requests["/catalog.json"] == FAST.max_attempts


@pytest.mark.parametrize("path", ["/catalog.json", f"/{S2}/collection.json", f"/{S2}/S2A_2/S2A_2.json"])
def test_a_refused_read_fails_at_once_and_is_never_empty(served: _Server, path: str) -> None:
    served.fail[path] = [403] * 10
    with pytest.raises(CatalogUnavailableError, match="403"):
        _ids(f"{served.url}/catalog.json")
    assert served.requests[path] == 1  # a refusal is not retried


def test_a_missing_catalog_is_not_found_at_once(served: _Server) -> None:
    with pytest.raises(SearchError, match="local catalog not found") as info:
        _ids(f"{served.url}/nope.json")
    assert not isinstance(info.value, CatalogUnavailableError)
    assert served.requests["/nope.json"] == 1

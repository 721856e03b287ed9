"""Prefect retries: one retry layer (Prefect never retries a task that reaches a catalog:
pipelines.retry does), and Prefect retries only what may pass (flows.common.retry_condition)."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest_plugins = ["tests.services.fixtures"]

REPO = Path(__file__).resolve().parents[2]


def _decorator_kwargs(fn: ast.FunctionDef, name: str) -> dict[str, ast.expr] | None:
    for d in fn.decorator_list:
        if isinstance(d, ast.Call) and isinstance(d.func, ast.Name) and d.func.id == name:
            return {k.arg: k.value for k in d.keywords if k.arg}
        if isinstance(d, ast.Name) and d.id == name:
            return {}
    return None


def test_catalog_tasks_have_no_prefect_retries() -> None:
    catalog_tasks = []
    for path in sorted((REPO / "flows").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            kw = _decorator_kwargs(node, "task")
            if kw is None:
                continue
            tags = ast.literal_eval(kw["tags"]) if "tags" in kw else []
            if "catalog-api" in tags or (path.name == "embed.py" and node.name == "embed_task"):
                catalog_tasks.append(f"{path.name}:{node.name}")
                assert "retries" not in kw, (
                    f"{path.name}:{node.name} stacks Prefect retries on pipelines.retry"
                )
    assert len(catalog_tasks) >= 4, catalog_tasks


def test_every_task_with_retries_retries_only_what_may_pass() -> None:
    """A task with Prefect ``retries`` and no ``retry_condition_fn`` retries whatever it raises (a
    refused access, a missing bucket, bad input): each one takes ``flows.common.retry_condition``.
    A flow with ``retries`` runs its body under ``flow_retries_when_worth_it``."""
    with_retries, flows_with_retries = [], []
    for path in sorted((REPO / "flows").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            kw = _decorator_kwargs(node, "task")
            if kw is not None and "retries" in kw:
                with_retries.append(f"{path.name}:{node.name}")
                condition = kw.get("retry_condition_fn")
                assert isinstance(condition, ast.Name) and condition.id == "retry_condition", (
                    f"{path.name}:{node.name} retries every exception"
                )
            kw = _decorator_kwargs(node, "flow")
            if kw is not None and "retries" in kw:
                flows_with_retries.append(f"{path.name}:{node.name}")
                wrapped = [
                    w
                    for w in ast.walk(node)
                    if isinstance(w, ast.With)
                    and any(
                        isinstance(i.context_expr, ast.Call)
                        and isinstance(i.context_expr.func, ast.Name)
                        and i.context_expr.func.id == "flow_retries_when_worth_it"
                        for i in w.items
                    )
                ]
                assert wrapped, f"{path.name}:{node.name} retries every failure"
    assert len(with_retries) >= 6 and len(flows_with_retries) >= 2, (with_retries, flows_with_retries)


# ---------------------------------------------------------------------------------------------
# The same, under the Prefect test harness: what a task or flow raised decides whether it runs again.


def _s3_error(status: int, code: str) -> BaseException:
    from tests.flows.test_common import _s3_error as make

    return make(status, code)


def _input_error() -> BaseException:
    from pipelines.errors import InputError

    return InputError("bad input")


def _quiet_refresh(tmp_path: Path) -> Any:
    """Refresh parameters whose run finds nothing new, so it commits its watermark (commit_task)."""
    from tests.flows.test_refresh import _committed_days_ago, _params

    params = _params(tmp_path)
    _committed_days_ago(params, 10)
    return params


@pytest.mark.integration
@pytest.mark.parametrize(
    "make",
    [lambda: _s3_error(403, "AccessDenied"), lambda: _s3_error(404, "NoSuchBucket"), _input_error],
    ids=["403", "missing-bucket", "input-error"],
)
def test_a_task_is_tried_once_for_an_error_no_retry_passes(
    prefect_harness: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: Callable[[], BaseException]
) -> None:
    """``commit_task`` (retries=3) tried a refused write 4 times, 22 s of delays, before failing."""
    import flows.refresh

    params = _quiet_refresh(tmp_path)
    before = Path(params.watermark_url).read_bytes()
    calls: list[str] = []

    def refused(*args: Any, **kwargs: Any) -> None:
        calls.append("commit")
        raise make()

    monkeypatch.setattr(flows.refresh, "commit_watermark", refused)
    with pytest.raises(type(make())):
        flows.refresh.refresh(params)
    assert calls == ["commit"]
    assert Path(params.watermark_url).read_bytes() == before


@pytest.mark.integration
def test_a_task_is_retried_for_a_transient_error_and_the_flow_succeeds(
    prefect_harness: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3 503 SlowDown once: the task runs again (2 s later) and the run commits."""
    import flows.refresh
    from pipelines.storage import read_json

    params = _quiet_refresh(tmp_path)
    runs = read_json(params.watermark_url)["runs"]
    real = flows.refresh.commit_watermark
    calls: list[str] = []

    def slow_down_once(*args: Any, **kwargs: Any) -> None:
        calls.append("commit")
        if len(calls) == 1:
            raise _s3_error(503, "SlowDown")
        real(*args, **kwargs)

    monkeypatch.setattr(flows.refresh, "commit_watermark", slow_down_once)
    assert flows.refresh.refresh(params)["new_items"] == 0
    assert calls == ["commit", "commit"]
    assert read_json(params.watermark_url)["runs"] == runs + 1


def _ingest_params(tmp_path: Path) -> Any:
    from flows.ingest import IngestParams
    from flows.params import AreaParams

    return IngestParams(
        collections=("sentinel-2-l2a",),
        area=AreaParams(bbox=(5.0, 44.0, 6.0, 45.0), datetime="2023-01-01/2023-12-31"),
        out=str(tmp_path / "cubes"),
        catalog_url=str(tmp_path / "items.ndjson"),
    )


def _saved(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    """The ingest flow's search finds one item (counted in ``calls``)."""
    import flows.ingest
    from pipelines.cubes import SavedSearch

    def search_and_save(*args: Any, **kwargs: Any) -> SavedSearch:
        calls.append("search")
        return SavedSearch("items.ndjson", "sha256:0", 1, {"sentinel-2-l2a": 1}, ())

    monkeypatch.setattr(flows.ingest, "search_and_save", search_and_save)


@pytest.mark.integration
def test_a_flow_is_not_retried_for_an_error_no_retry_passes(
    prefect_harness: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bad input in a task of ``ingest``: tried once (not 3 times, 35 s of delays), and the flow
    is not run again (its one retry re-ran the search and the failing task 30 s later)."""
    import flows.ingest
    from pipelines.errors import InputError

    calls: list[str] = []
    _saved(monkeypatch, calls)

    def plan_saved(*args: Any, **kwargs: Any) -> Any:
        calls.append("plan")
        raise InputError("tile_size_m does not fit the grid")

    monkeypatch.setattr(flows.ingest, "plan_saved", plan_saved)
    with pytest.raises(InputError, match="does not fit"):
        flows.ingest.ingest(_ingest_params(tmp_path))
    assert calls == ["search", "plan"]


@pytest.mark.integration
def test_a_flow_whose_tiles_failed_is_retried_for_them(
    prefect_harness: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow's one retry stays for failed tiles: it redoes them and the run succeeds."""
    import flows.ingest

    calls: list[str] = []
    _saved(monkeypatch, calls)
    monkeypatch.setattr(flows.ingest, "plan_saved", lambda *a, **k: SimpleNamespace(tile_ids=["t1"]))

    def build_tiles(items_url: str, tile_ids: list[str], *args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append("build")
        failed = calls.count("build") == 1
        status, reason = ("failed", "HTTP 503 after 5 attempts") if failed else ("done", "")
        return {"outcomes": [{"tile_id": t, "status": status, "reason": reason} for t in tile_ids]}

    monkeypatch.setattr(flows.ingest, "build_tiles", build_tiles)
    result = flows.ingest.ingest.with_options(retry_delay_seconds=0)(_ingest_params(tmp_path))
    assert result["done"] == 1 and result["failed"] == 0
    assert calls == ["search", "build", "search", "build"]


def _failing_tiles(calls: list[str], retryable: dict[str, bool]) -> Callable[..., dict[str, Any]]:
    """A ``build_tiles`` whose first call fails each tile of ``retryable`` (with that flag, as
    ``process_tile`` classifies it) and builds the others; every later call builds them all."""

    def build_tiles(items_url: str, tile_ids: list[str], *args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append("build")
        first = calls.count("build") == 1
        outcomes = []
        for t in tile_ids:
            if first and t in retryable:
                why = (
                    "HTTP 503 after 5 attempts"
                    if retryable[t]
                    else "PermissionError: AccessDenied (HTTP 403)"
                )
                outcomes.append({"tile_id": t, "status": "failed", "reason": why, "retryable": retryable[t]})
            else:
                outcomes.append({"tile_id": t, "status": "done", "reason": "", "retryable": True})
        return {"outcomes": outcomes}

    return build_tiles


@pytest.mark.integration
@pytest.mark.parametrize(
    ("retryable", "retried"),
    [({"t1": False, "t2": False}, False), ({"t1": False, "t2": True}, True)],
    ids=["all-permanent", "one-transient"],
)
def test_a_flow_whose_tiles_failed_is_retried_only_when_one_of_them_may_pass(
    prefect_harness: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    retryable: dict[str, bool],
    retried: bool,
) -> None:
    """Failed tiles kept the flow's retry whatever they failed for: tiles that all failed for what
    no retry passes (a refused access, a missing file, bad data) were run again 30 s later, and
    failed the same way. Now the retry is withdrawn unless one failed tile may pass."""
    import flows.ingest
    from flows.common import TilesFailedError

    calls: list[str] = []
    _saved(monkeypatch, calls)
    tiles = ["t1", "t2", "t3"]
    monkeypatch.setattr(flows.ingest, "plan_saved", lambda *a, **k: SimpleNamespace(tile_ids=tiles))
    monkeypatch.setattr(flows.ingest, "build_tiles", _failing_tiles(calls, retryable))
    run = flows.ingest.ingest.with_options(retry_delay_seconds=0)
    if retried:
        result = run(_ingest_params(tmp_path))
        assert result["done"] == 3 and result["failed"] == 0
        assert calls == ["search", "build", "search", "build"]
    else:
        with pytest.raises(TilesFailedError, match="none of the failed tiles may pass a retry"):
            run(_ingest_params(tmp_path))
        assert calls == ["search", "build"]


def _aiohttp_answer(status: int, url: str) -> BaseException:
    """What fsspec's ``http://`` raises for an error answer: its message is built from a URL object,
    so it cannot be redacted in place."""
    import aiohttp
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    info = aiohttp.RequestInfo(URL(url), "GET", CIMultiDictProxy(CIMultiDict()), URL(url))
    return aiohttp.ClientResponseError(info, (), status=status, message="Service Unavailable")


@pytest.mark.parametrize(("status", "retried"), [(503, True), (403, False)])
def test_a_redacted_failure_keeps_the_retry_of_the_error_it_replaces(status: int, retried: bool) -> None:
    """A task's exception whose message names a credential and cannot be redacted in place is
    replaced by its redacted text (``redacts_errors``); the replacement used to be a plain
    RunFailedError, so an HTTP 503 lost its task retry. It now keeps the original's answer."""
    from flows.common import worth_a_retry
    from flows.params import redacts_errors

    url = "https://h.example/items.json?token=SECRET123"

    @redacts_errors
    def read() -> None:
        raise _aiohttp_answer(status, url)

    with pytest.raises(Exception) as raised:
        read()
    assert "SECRET123" not in str(raised.value) and raised.value.__cause__ is None
    assert worth_a_retry(raised.value) is retried

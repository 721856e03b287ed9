"""Incremental refresh: watermark semantics, exactly-the-new-items, and tiles touched."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

import pipelines.search.refresh as refresh_module
from pipelines.search import (
    SearchError,
    SearchRequest,
    commit_watermark,
    plan_refresh,
    read_watermark,
    should_retrain,
)
from pipelines.tiling import TileGrid

GRID = TileGrid(tile_size_m=7680.0)
REQUEST = SearchRequest(collections=("sentinel-2-l2a",), bbox=(5.0, 44.0, 7.0, 46.0))


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _item(item_id: str, lon: float, updated: str, acquired: str = "2023-06-01T10:30:00Z") -> dict:
    w, s, e, n = lon - 0.01, 45.0, lon + 0.01, 45.02
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "bbox": [w, s, e, n],
        "properties": {"datetime": acquired, "updated": updated, "eo:cloud_cover": 5.0},
        "links": [],
        "assets": {},
    }


def _write(path: Path, items: list[dict]) -> str:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return str(path)


def test_refresh_finds_exactly_the_new_items(tmp_path: Path) -> None:
    grid = TileGrid(tile_size_m=7680.0)
    request = SearchRequest(collections=("sentinel-2-l2a",), bbox=(5.0, 44.0, 7.0, 46.0))
    wm_url = str(tmp_path / "state" / "watermark.json")
    catalog = tmp_path / "items.ndjson"
    first = [_item("a", 5.5, "2023-06-02T00:00:00Z"), _item("b", 6.5, "2023-06-02T00:00:00Z")]
    url = _write(catalog, first)

    plan = plan_refresh(request, wm_url, grid=grid, catalog_url=url)
    assert {i["id"] for i in plan.new_items} == {"a", "b"}
    # a at 5.5E is in zone 31, b at 6.5E in zone 32: tiles in both zones
    assert {t.split("_")[0] for t in plan.tile_ids} == {"32631", "32632"}
    assert read_watermark(wm_url) is None  # nothing committed until the work succeeded

    commit_watermark(wm_url, plan)
    again = plan_refresh(request, wm_url, grid=grid, catalog_url=url)
    assert again.is_empty and not again.tile_ids
    assert any("no new items" in n for n in again.notes)

    # a new item published in the same second as the watermark, and one later, are both found
    url = _write(
        catalog,
        [*first, _item("c", 5.6, "2023-06-02T00:00:00Z"), _item("d", 6.6, "2023-06-03T00:00:00Z")],
    )
    third = plan_refresh(request, wm_url, grid=grid, catalog_url=url)
    assert sorted(i["id"] for i in third.new_items) == ["c", "d"]
    expected_tiles = {t.tile_id for t in grid.tiles_for_items(third.new_items)}
    assert set(third.tile_ids) == expected_tiles
    commit_watermark(wm_url, third)
    wm = read_watermark(wm_url)
    assert wm is not None and wm.updated is not None and wm.updated.startswith("2023-06-03") and wm.runs == 2


def test_retrain_threshold() -> None:
    assert not should_retrain(3, min_new_items=10)
    assert should_retrain(3, min_new_items=10, items_since_training=8)
    assert not should_retrain(100, min_new_items=0)


def _undated(item_id: str, lon: float, acquired: str = "2023-06-01T10:30:00Z") -> dict:
    """An item with neither ``updated`` nor ``created`` (every Planetary Computer Sentinel-2 item)."""
    item = _item(item_id, lon, "unused", acquired)
    del item["properties"]["updated"]
    return item


def _plan(wm_url: str, url: str, now: str, **kw: Any) -> Any:
    return plan_refresh(REQUEST, wm_url, grid=GRID, catalog_url=url, now=_at(now), **kw)


def _ids(plan: Any) -> list[str]:
    return sorted(i["id"] for i in plan.new_items)


def test_items_without_updated_or_created_are_found_once_and_never_again(tmp_path: Path) -> None:
    catalog = tmp_path / "items.ndjson"
    # a catalog of undated items only (Planetary Computer): the second run used to crash (watermark
    # at year 1, OverflowError) and a new undated item was never found
    wm_url = str(tmp_path / "undated" / "watermark.json")
    url = _write(catalog, [_undated("u1", 5.5, "2023-06-01T10:00:00Z")])
    first = _plan(wm_url, url, "2023-06-02T00:00:00Z")
    assert _ids(first) == ["u1"]
    commit_watermark(wm_url, first)
    url = _write(catalog, [_undated("u1", 5.5), _undated("u2", 6.5, "2023-06-02T10:00:00Z")])
    second = _plan(wm_url, url, "2023-06-03T00:00:00Z")
    assert _ids(second) == ["u2"]
    commit_watermark(wm_url, second)
    for day in ("2023-06-04", "2023-06-20"):  # never again
        assert _plan(wm_url, url, f"{day}T00:00:00Z").is_empty

    # a mixed catalog (10 of 16 Earth Search sentinel-2-c1-l2a items are undated)
    wm_url = str(tmp_path / "mixed" / "watermark.json")
    dated = _item("d1", 5.5, "2023-06-02T00:00:00Z")
    url = _write(catalog, [dated, _undated("u1", 6.5)])
    plan = _plan(wm_url, url, "2023-06-02T00:00:00Z")
    assert _ids(plan) == ["d1", "u1"]
    commit_watermark(wm_url, plan)
    url = _write(catalog, [dated, _undated("u1", 6.5), _undated("u3", 5.6, "2023-06-02T09:00:00Z")])
    third = _plan(wm_url, url, "2023-06-03T00:00:00Z")
    assert _ids(third) == ["u3"]
    commit_watermark(wm_url, third)
    assert _plan(wm_url, url, "2023-06-04T00:00:00Z").is_empty
    wm = read_watermark(wm_url)
    assert wm is not None and wm.updated == "2023-06-02T00:00:00Z"


def test_a_year_one_watermark_of_the_old_code_no_longer_crashes(tmp_path: Path) -> None:
    wm_url = tmp_path / "watermark.json"
    # what the old code committed after a first run of only undated items
    old = {"format": 1, "updated": "0001-01-01T00:00:00+00:00", "ids_at_updated": ["u1"], "runs": 1}
    wm_url.write_text(json.dumps(old))
    items = [
        _undated("u1", 5.5, "2023-01-10T10:00:00Z"),  # ingested by that first run, long ago
        _undated("u2", 6.5, "2023-06-08T10:00:00Z"),  # acquired since: never ingested (runs crashed)
        _item("d1", 5.6, "2023-06-09T00:00:00Z"),
    ]
    url = _write(tmp_path / "items.ndjson", items)
    plan = _plan(str(wm_url), url, "2023-06-10T00:00:00Z")
    assert _ids(plan) == ["d1", "u2"]  # not u1: older than the undated window
    assert any("older version" in n for n in plan.notes)
    commit_watermark(str(wm_url), plan)
    assert _plan(str(wm_url), url, "2023-06-11T00:00:00Z").is_empty


def test_an_item_published_late_with_an_older_updated_is_found_once(tmp_path: Path) -> None:
    wm_url = str(tmp_path / "watermark.json")
    catalog = tmp_path / "items.ndjson"
    a = _item("a", 5.5, "2023-06-02T12:00:00Z")
    commit_watermark(wm_url, _plan(wm_url, _write(catalog, [a]), "2023-06-02T13:00:00Z"))

    # stamped before the watermark (a writer's clock behind, or published after the run): one
    # within the lookback, one older than it (not found: the documented limit)
    late = _item("late", 6.5, "2023-06-02T11:59:00Z")
    too_late = _item("too-late", 6.6, "2023-05-30T00:00:00Z")
    url = _write(catalog, [a, late, too_late])
    plan = _plan(wm_url, url, "2023-06-03T00:00:00Z")
    assert _ids(plan) == ["late"]
    assert plan.next_watermark is not None and plan.next_watermark.updated == "2023-06-02T12:00:00Z"
    commit_watermark(wm_url, plan)
    assert _plan(wm_url, url, "2023-06-04T00:00:00Z").is_empty  # not twice

    # a newer item moves the watermark on; a late one after that never moves it back
    b = _item("b", 5.7, "2023-06-03T06:00:00Z")
    url = _write(catalog, [a, late, too_late, b])
    plan = _plan(wm_url, url, "2023-06-04T00:00:00Z")
    assert _ids(plan) == ["b"]
    commit_watermark(wm_url, plan)
    url = _write(catalog, [a, late, too_late, b, _item("c", 5.8, "2023-06-02T08:00:00Z")])
    plan = _plan(wm_url, url, "2023-06-05T00:00:00Z")
    assert _ids(plan) == ["c"]
    assert plan.next_watermark is not None and plan.next_watermark.updated == "2023-06-03T06:00:00Z"
    commit_watermark(wm_url, plan)
    assert _plan(wm_url, url, "2023-06-06T00:00:00Z").is_empty

    # a watermark written by the old code (format 1): nothing before its instant is planned again
    old = {"format": 1, "updated": "2023-06-03T06:00:00+00:00", "ids_at_updated": ["b"], "runs": 3}
    Path(wm_url).write_text(json.dumps(old))
    assert _plan(wm_url, url, "2023-06-06T00:00:00Z").is_empty
    url = _write(catalog, [a, late, too_late, b, _item("c", 5.8, "2023-06-02T08:00:00Z"), _undated("u", 6.1)])
    plan = _plan(wm_url, url, "2023-06-06T00:00:00Z")
    assert _ids(plan) == ["u"]  # an undated item acquired within the window: the old code never found it
    commit_watermark(wm_url, plan)
    assert _plan(wm_url, url, "2023-06-07T00:00:00Z").is_empty


def test_reads_and_state_stay_bounded_by_the_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    searched: list[SearchRequest] = []
    real = refresh_module.search

    def spy(request: SearchRequest, **kw: Any) -> Any:
        searched.append(request)
        return real(request, **kw)

    monkeypatch.setattr(refresh_module, "search", spy)
    wm_url = str(tmp_path / "watermark.json")
    catalog = tmp_path / "items.ndjson"
    items = [
        _item("d-old", 5.5, "2023-06-01T00:00:00Z"),
        _item("d-new", 5.6, "2023-06-09T00:00:00Z"),
        _undated("u-old", 6.5, "2023-05-20T10:00:00Z"),
        _undated("u-new", 6.6, "2023-06-09T10:00:00Z"),
    ]
    url = _write(catalog, items)
    first = _plan(wm_url, url, "2023-06-10T00:00:00Z")
    assert _ids(first) == ["d-new", "d-old", "u-new", "u-old"]
    wm = first.next_watermark
    assert wm is not None
    assert [k for k, _ in wm.recent or ()] == ["sentinel-2-l2a/d-new"]  # d-old is 8 days before
    assert [k for k, _ in wm.undated or ()] == ["sentinel-2-l2a/u-new", "sentinel-2-l2a/u-old"]
    commit_watermark(wm_url, first)

    # 25 days later: the searches start 2 days before the watermark and 30 before the last run
    searched.clear()
    items.append(_undated("u3", 6.7, "2023-07-04T10:00:00Z"))
    url = _write(catalog, items)
    plan = _plan(wm_url, url, "2023-07-05T00:00:00Z")
    assert _ids(plan) == ["u3"]
    assert [r.updated_since for r in searched] == ["2023-06-06T23:59:59.999999Z", None]
    assert [r.datetime for r in searched] == [None, "2023-05-11T00:00:00Z/.."]
    commit_watermark(wm_url, plan)
    wm = read_watermark(wm_url)
    assert wm is not None and wm.checked == "2023-07-05T00:00:00Z"
    # ids acquired before the new window (2023-06-05) are pruned: the state holds the window only
    assert [k for k, _ in wm.undated or ()] == ["sentinel-2-l2a/u-new", "sentinel-2-l2a/u3"]
    assert [k for k, _ in wm.recent or ()] == ["sentinel-2-l2a/d-new"]
    searched.clear()
    assert _plan(wm_url, url, "2023-07-06T00:00:00Z").is_empty  # the pruned ids are not read again
    assert [r.datetime for r in searched] == [None, "2023-06-05T00:00:00Z/.."]


def test_refresh_refuses_max_items_which_would_skip_what_it_cut(tmp_path: Path) -> None:
    items = [_item(f"m{k}", 5.5, f"2023-06-0{k}T00:00:00Z") for k in range(1, 6)]
    url = _write(tmp_path / "items.ndjson", items)
    request = SearchRequest(collections=("sentinel-2-l2a",), bbox=(5.0, 44.0, 7.0, 46.0), max_items=2)
    wm_url = str(tmp_path / "watermark.json")
    with pytest.raises(SearchError, match="max_items"):
        plan_refresh(request, wm_url, grid=GRID, catalog_url=url)
    assert read_watermark(wm_url) is None

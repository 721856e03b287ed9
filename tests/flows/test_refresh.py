"""The `refresh` flow under a Prefect test harness: when it commits its watermark."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["tests.services.fixtures"]

BBOX = (5.0, 44.0, 7.0, 46.0)


def _item(item_id: str, updated: str) -> dict[str, Any]:
    w, s, e, n = 5.49, 45.0, 5.51, 45.02
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "bbox": [w, s, e, n],
        "properties": {"datetime": "2023-06-01T10:30:00Z", "updated": updated, "eo:cloud_cover": 5.0},
        "links": [],
        "assets": {},
    }


def _params(tmp_path: Path) -> Any:
    from flows.ingest import IngestParams
    from flows.params import AreaParams
    from flows.refresh import RefreshParams

    catalog = tmp_path / "items.ndjson"
    catalog.write_text(json.dumps(_item("a", "2023-06-02T00:00:00Z")) + "\n")
    ingest = IngestParams(
        collections=("sentinel-2-l2a",),
        area=AreaParams(bbox=BBOX, datetime="2023-01-01/2023-12-31"),
        out=str(tmp_path / "cubes"),
        catalog_url=str(catalog),
    )
    return RefreshParams(ingest=ingest)


def _committed_days_ago(params: Any, days: int) -> dict[str, Any]:
    """The watermark a successful refresh ``days`` ago left: item ``a`` ingested then."""
    from pipelines.search import commit_watermark, plan_refresh
    from pipelines.storage import read_json

    then = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    plan = plan_refresh(
        params.ingest.request(),
        params.watermark_url,
        grid=params.ingest.cube_request().grid,
        catalog_url=params.ingest.catalog_url,
        now=then,
    )
    assert [i["id"] for i in plan.new_items] == ["a"]
    commit_watermark(params.watermark_url, plan)
    return dict(read_json(params.watermark_url))


@pytest.mark.integration
def test_a_run_without_new_items_commits_its_watermark(prefect_harness: str, tmp_path: Path) -> None:
    """A quiet run (nothing new) commits the watermark its plan carries: ``checked`` moves to this
    run, so the undated items' window (from ``checked`` less ``undated_lookback``) does not grow
    from the last run that found something. Before, only runs with new items committed."""
    from flows.refresh import refresh
    from pipelines.search import read_time
    from pipelines.storage import read_json

    params = _params(tmp_path)
    before = _committed_days_ago(params, 10)
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    result = refresh(params)
    assert result["new_items"] == 0 and result["tile_ids"] == []
    after = read_json(params.watermark_url)
    assert after["runs"] == before["runs"] + 1
    checked = read_time(after["checked"])
    assert checked is not None and checked >= started
    assert after["updated"] == before["updated"]  # nothing ingested: the mark does not move
    assert after["recent"] == before["recent"]


@pytest.mark.integration
def test_a_run_whose_search_fails_keeps_the_watermark(
    prefect_harness: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An access failure of the search fails the run and leaves the watermark as it was (advancing
    it would lose the items the next run must find)."""
    import pipelines.search.refresh as refresh_module
    from flows.refresh import refresh

    params = _params(tmp_path)
    _committed_days_ago(params, 10)
    before = Path(params.watermark_url).read_bytes()

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise OSError("catalog unreachable")

    monkeypatch.setattr(refresh_module, "search", unreachable)
    with pytest.raises(OSError, match="catalog unreachable"):
        refresh(params)
    assert Path(params.watermark_url).read_bytes() == before

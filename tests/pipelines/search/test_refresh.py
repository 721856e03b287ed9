"""Incremental refresh: watermark semantics, exactly-the-new-items, and tiles touched."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.search import SearchRequest, commit_watermark, plan_refresh, read_watermark, should_retrain
from pipelines.tiling import TileGrid


def _item(item_id: str, lon: float, updated: str) -> dict:
    w, s, e, n = lon - 0.01, 45.0, lon + 0.01, 45.02
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
    assert wm is not None and wm.updated.startswith("2023-06-03") and wm.runs == 2


def test_retrain_threshold() -> None:
    assert not should_retrain(3, min_new_items=10)
    assert should_retrain(3, min_new_items=10, items_since_training=8)
    assert not should_retrain(100, min_new_items=0)

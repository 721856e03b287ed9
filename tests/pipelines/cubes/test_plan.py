"""Cube planning from real items: the catalog inferred from the items, catalog spellings of collection ids."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipelines.cubes import CubeRequest, plan_cubes
from pipelines.errors import InputError
from tests.conftest import REPO_ROOT

STAC_ITEMS = REPO_ROOT.parent / "shared" / "data" / "stac-items"
pytestmark = pytest.mark.skipif(
    not (STAC_ITEMS / "index.json").exists(),
    reason=f"recorded STAC items not found at {STAC_ITEMS} (../shared/data/stac-items)",
)


def _items(catalog: str, collection: str) -> list[dict[str, Any]]:
    index = json.loads((STAC_ITEMS / "index.json").read_text())["items"]
    return [
        json.loads((STAC_ITEMS / e["file"]).read_text())
        for e in index
        if e["catalog"] == catalog and e["collection"] == collection
    ]


def test_the_catalog_is_inferred_from_the_items() -> None:
    pc = _items("planetary-computer", "landsat-c2-l2")
    plan = plan_cubes(CubeRequest(tile_size_m=7680), pc)
    assert plan.spec.catalog == "planetary-computer" and plan.spec.collections == ("landsat-c2-l2",)
    assert len(plan.items) == len(pc) and plan.tiles
    es = _items("earth-search", "sentinel-2-c1-l2a") + _items("earth-search", "landsat-c2-l2")
    plan = plan_cubes(CubeRequest(tile_size_m=7680), es)
    assert plan.spec.catalog == "earth-search"
    assert plan.spec.collections == ("landsat-c2-l2", "sentinel-2-c1-l2a")
    with pytest.raises(InputError, match=r"several catalogs .*earth-search, planetary-computer.*--catalog"):
        plan_cubes(CubeRequest(), pc + es)
    # named explicitly, the request wins
    assert plan_cubes(CubeRequest(catalog="sample", tile_size_m=7680), pc).spec.catalog == "sample"


def test_catalog_spellings_of_a_collection_are_one_collection() -> None:
    (item,) = [i for i in _items("planetary-computer", "landsat-c2-l2")][:1]
    old = {**item, "collection": "HLSS30.v2.0", "links": []}
    new = {**item, "id": "other", "collection": "HLSS30_2.0", "links": []}
    plan = plan_cubes(
        CubeRequest(catalog="cmr-stac-lpcloud", collections="HLSS30.v2.0", tile_size_m=7680), [old, new]
    )
    assert plan.spec.collections == ("HLSS30_2.0",) and len(plan.items) == 2

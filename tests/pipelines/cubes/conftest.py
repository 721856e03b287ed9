"""The cube tests' shared synthetic scene and its cube store, built once per run (read-only)."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.cubes import write_cubes
from tests.pipelines.cubes.support import TILE_IDS, s2_item, spec


@pytest.fixture(scope="package")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A: baseline 02.14 with a cloud box and a no-data strip; B: baseline 05.00 (DN + 1000), clear,
    10 days later; A2: same solar day as A, 10 min later, no no-data strip (fills A's gap).
    ``{"root": folder of the COGs, "A": item, "B": item, "A2": item}``."""
    root = tmp_path_factory.mktemp("scene")
    a = s2_item(root, "A", cloud_boxes=[(0.1, 0.55, 0.4, 0.9)], nodata_box=(0.0, 0.0, 0.15, 1.0))
    b = s2_item(
        root, "B", datetime="2023-06-11T10:30:00Z", properties={"s2:processing_baseline": "05.00"}, seed=1
    )
    a2 = s2_item(root, "A2", datetime="2023-06-01T10:40:00Z", seed=2)
    return {"root": root, "A": a, "B": b, "A2": a2}


@pytest.fixture(scope="package")
def built(scene: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A and B written over the 2 x 2 tiles by one clean, uninterrupted run:
    ``{"out": store folder, "items": [A, B], "summary": its RunSummary}``. Copy ``out`` to change it."""
    out = tmp_path_factory.mktemp("store") / "cubes"
    items = [scene["A"], scene["B"]]
    summary = write_cubes(items, TILE_IDS, spec(), str(out), progress=False)
    return {"out": out, "items": items, "summary": summary}

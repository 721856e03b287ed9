"""The `ingest` flow under a Prefect test harness: a rerun after deletions refills the holes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.pipelines.cubes.support import X0, Y0, s2_item

pytest_plugins = ["tests.services.fixtures"]


@pytest.mark.integration
def test_ingest_rerun_after_deletion_refills_the_store(prefect_harness: str, tmp_path: Path) -> None:
    """Finding 4: the flow cached its cube tasks on their inputs, so after tiles (or the whole store)
    were deleted a rerun reported them done from cache and wrote nothing."""
    from flows.ingest import IngestParams, ingest
    from flows.params import AreaParams
    from pipelines.cubes import CubeStore

    item = s2_item(tmp_path / "items", "P1", bounds=(X0, Y0, X0 + 3840.0, Y0 + 1920.0))
    nd = tmp_path / "items.ndjson"
    nd.write_text(json.dumps(item) + "\n")
    w, s, e, n = item["bbox"]
    out = tmp_path / "cubes"
    params = IngestParams(
        collections=("sentinel-2-l2a",),
        area=AreaParams(bbox=(w + 0.001, s + 0.001, e - 0.001, n - 0.001), datetime="2023-01-01/2023-12-31"),
        out=str(out),
        catalog_url=str(nd),
        tile_size_m=1920.0,
        tiles_per_task=4,
    )
    first: dict[str, Any] = ingest(params)
    done = CubeStore.open(str(out)).complete_tiles()
    assert first["failed"] == 0 and done and first["done"] == len(first["tile_ids"])

    victim = done[0]  # one tile deleted (its data and its record)
    shutil.rmtree(out / victim)
    (out / "_tiles" / f"{victim}.json").unlink()
    again: dict[str, Any] = ingest(params)
    assert again["failed"] == 0
    assert CubeStore.open(str(out)).complete_tiles() == done
    assert (out / victim).is_dir()

    shutil.rmtree(out)  # the whole store deleted
    third: dict[str, Any] = ingest(params)
    assert third["failed"] == 0
    assert CubeStore.open(str(out)).complete_tiles() == done

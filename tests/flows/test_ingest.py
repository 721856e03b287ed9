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


def test_the_cube_task_returns_its_outcomes_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cube task's result is persisted by Prefect, and its reasons feed the run's summary
    artifact and its failure message: a URL in them is redacted."""
    import flows.ingest
    from flows.ingest import IngestParams, cube_batch_task
    from flows.params import AreaParams, withhold_credentials

    secret_url = "https://user:SECRETPW7@h.example/a.tif?token=SECRET123"
    secret_out = "https://user:SECRETPW7@h.example/cubes?sig=SECRET456"

    def fake_build(
        items_url: str,
        tile_ids: list[str],
        spec: Any,
        out: str,
        options: Any,
        *,
        read_options: Any,
        holder_wait_s: float,
    ) -> dict[str, Any]:
        assert out == secret_out  # the task writes to the real URL
        reads.append(read_options)
        waits.append(holder_wait_s)
        return {"out": out, "outcomes": [{"tile_id": tile_ids[0], "status": "failed", "reason": f"cannot read {secret_url}"}]}  # fmt: skip

    reads: list[Any] = []
    waits: list[float] = []

    monkeypatch.setattr(flows.ingest, "build_tiles", fake_build)
    params = IngestParams(
        collections=("sentinel-2-l2a",),
        area=AreaParams(bbox=(5.0, 44.0, 6.0, 45.0), datetime="2023-01-01/2023-12-31"),
        out=withhold_credentials(secret_out),  # as a caller in this process gives it (flows.params)
        max_attempts=2,
        holder_wait_min=0.5,
    )
    result = cube_batch_task.fn("items.ndjson", ["t1"], params)
    assert waits == [30.0]  # holder_wait_min (aom cubes --holder-wait) reaches the library in seconds
    assert reads == [{"GDAL_HTTP_MAX_RETRY": "1", "GDAL_HTTP_RETRY_CODES": "408,425,429,500,502,503,504"}]
    text = json.dumps(result)
    assert "SECRET" not in text, text
    assert result["outcomes"][0]["reason"] == "cannot read https://***@h.example/a.tif?token=***"


def test_the_search_task_makes_max_attempts_requests(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``max_attempts`` of the flow (as `aom cubes --max-attempts`) bounds each catalog request: a
    catalog answering 503 gets exactly that many requests, then the task fails."""
    import contextlib

    import flows.ingest
    from flows.ingest import IngestParams, search_task
    from flows.params import AreaParams
    from pipelines.search import CatalogUnavailableError
    from tests.pipelines.search.support import fake_api

    monkeypatch.setattr(flows.ingest, "catalog_slot", contextlib.nullcontext)
    with fake_api([], fail_always=503, retry_after="0") as api:
        params = IngestParams(
            collections=("sentinel-2-l2a",),
            area=AreaParams(bbox=(5.0, 44.0, 6.0, 45.0), datetime="2023-01-01/2023-12-31"),
            out=str(tmp_path / "cubes"),
            catalog_url=api.url,
            max_attempts=2,
        )
        with pytest.raises(CatalogUnavailableError, match="after 2 attempt"):
            search_task.fn(params)
        assert len(api.requests) == 2
    with pytest.raises(ValueError, match="max_attempts"):
        IngestParams(
            **{**params.model_dump(exclude={"area", "storage"}), "area": params.area, "max_attempts": 0}
        )

"""Cube planning from real items: the catalog inferred from the items, catalog spellings of collection ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipelines.cubes import CubeRequest, plan_cubes, read_items
from pipelines.errors import InputError
from pipelines.retry import RetryPolicy
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
        CubeRequest(catalog="cmr-stac-lpcloud", collections=("HLSS30.v2.0",), tile_size_m=7680), [old, new]
    )
    assert plan.spec.collections == ("HLSS30_2.0",) and len(plan.items) == 2


# ---------------------------------------------------------------------------------------------
# read_items: a source the network failed to give is a failed run (retryable), never bad input


def _items_file(tmp_path: Path) -> Path:
    path = tmp_path / "items.ndjson"
    items = [{"type": "Feature", "stac_version": "1.0.0", "id": f"i{k}", "collection": "c"} for k in range(2)]
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def test_items_read_once_transient_then_answered(tmp_path: Path) -> None:
    from tests.pipelines.access_servers import serve

    path = _items_file(tmp_path)
    with serve(tmp_path, force=[503]) as server:
        items = read_items(
            server.href(path), str(tmp_path / "cubes"), retry=RetryPolicy(sleep=lambda s: None)
        )
    assert [i["id"] for i in items] == ["i0", "i1"]
    assert len(server.requests) == 2  # the 503, then the answer


@pytest.mark.parametrize("status", [503, 403])
def test_items_the_server_does_not_give_fail_the_run_not_as_bad_input(tmp_path: Path, status: int) -> None:
    """A 503 that outlasts the retries fails the run (exit 1) as worth a retry; a 403 fails it at
    once, not worth one. Before, both were bad input (exit 2), the cause dropped, so never retried."""
    from pipelines.retry import is_transient
    from pipelines.search import CatalogUnavailableError
    from tests.pipelines.access_servers import serve

    path = _items_file(tmp_path)
    policy = RetryPolicy(max_attempts=3, sleep=lambda s: None)
    with serve(tmp_path, force=[status] * 3) as server, pytest.raises(CatalogUnavailableError) as err:
        read_items(server.href(path), str(tmp_path / "cubes"), retry=policy)
    assert not isinstance(err.value, InputError) and err.value.exit_code == 1
    assert is_transient(err.value) is (status == 503)
    assert len(server.requests) == (3 if status == 503 else 1)


def test_items_that_are_not_there_are_bad_input(tmp_path: Path) -> None:
    from tests.pipelines.access_servers import serve

    with serve(tmp_path) as server, pytest.raises(InputError, match="items"):
        read_items(f"{server.url}/nope.ndjson", str(tmp_path / "cubes"))
    with pytest.raises(InputError):
        read_items(str(tmp_path / "nope.ndjson"), str(tmp_path / "cubes"))

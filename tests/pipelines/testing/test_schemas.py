"""The offline schema set validates STAC 1.1.0 documents (what pystac writes for the sample catalog)."""

from __future__ import annotations

import pytest

from pipelines.testing.schemas import SchemaSet

STAC_ITEM_1_1 = "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"


def _item(**props: object) -> dict:
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "x",
        "geometry": {"type": "Point", "coordinates": [6.0, 45.0]},
        "bbox": [6.0, 45.0, 6.0, 45.0],
        "properties": {"datetime": "2023-06-01T10:00:00Z", **props},
        "links": [],
        "assets": {},
    }


def test_stac_1_1_items_validate_offline() -> None:
    """STAC 1.1.0's item schema ``$ref``s ``common.json``, whose copy's ``$id`` is misspelt
    (``.../commonjson``): every 1.1.0 validation raised ``Unresolvable: common.json``."""
    schemas = SchemaSet.find()
    if schemas is None:
        pytest.skip("the shared schemas are not there (../shared/schemas or $AOM_SCHEMAS_DIR)")
    assert schemas.errors(_item(platform="sentinel-2a"), STAC_ITEM_1_1) == []
    assert any("constellation" in e for e in schemas.errors(_item(constellation=None), STAC_ITEM_1_1))


def test_stac_errors_check_the_declared_version_and_extensions() -> None:
    schemas = SchemaSet.find()
    if schemas is None:
        pytest.skip("the shared schemas are not there (../shared/schemas or $AOM_SCHEMAS_DIR)")
    proj = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
    absent = "https://stac-extensions.github.io/not-there/v9.9.9/schema.json"
    good = {**_item(**{"proj:code": "EPSG:32631"}), "stac_extensions": [proj, absent]}
    assert schemas.stac_errors(good) == []
    assert schemas.missing_extensions(good) == [absent]
    bad = {**good, "properties": {**good["properties"], "proj:code": 5}}
    assert any(e.startswith(proj) for e in schemas.stac_errors(bad))
    old = {**good, "stac_version": "1.0.0", "collection": "c"}  # 1.0.0 core; collection without its link
    assert any(e.startswith("https://schemas.stacspec.org/v1.0.0/") for e in schemas.stac_errors(old))

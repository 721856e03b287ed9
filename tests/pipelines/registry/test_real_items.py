"""The registry against real items (``../shared/data/stac-items``): every targeted item is understood,
offsets follow the documented rule per collection, and self-contradicting items are detected."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from pipelines.registry import load_registry
from tests.conftest import REPO_ROOT

STAC_ITEMS = REPO_ROOT.parent / "shared" / "data" / "stac-items"
pytestmark = pytest.mark.skipif(
    not (STAC_ITEMS / "index.json").exists(),
    reason=f"recorded STAC items not found at {STAC_ITEMS} (../shared/data/stac-items)",
)


def _targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    index = json.loads((STAC_ITEMS / "index.json").read_text())["items"]
    return [(e, json.loads((STAC_ITEMS / e["file"]).read_text())) for e in index if e["target_collection"]]


def test_every_targeted_item_is_understood() -> None:
    reg = load_registry()
    full = 0
    for entry, item in _targets():
        if entry["catalog"] not in reg.catalogs:
            continue  # test data of other origins (stactools HLS)
        cs = reg.collection(item["collection"], entry["catalog"])
        assert reg.catalog_of(item) in (entry["catalog"], None)
        if "assets" not in item:
            continue  # partial items (fields exclude)
        full += 1
        missing = sorted((set(cs.assets.values()) | set(cs.mask.mask_assets())) - set(item["assets"]))
        assert not missing, (item["id"], missing)
    assert full >= 30  # 36 full items in the recorded set


def test_earth_search_offsets_follow_the_collection_rule_and_contradictions_are_found() -> None:
    reg = load_registry()
    contradicting = consistent = 0
    for entry, item in _targets():
        if (
            entry["catalog"] != "earth-search"
            or "assets" not in item
            or "sentinel-2" not in entry["collection"]
        ):
            continue
        cs = reg.collection(item["collection"], "earth-search")
        _, offset = cs.scale_offset(item["properties"])
        said = cs.contradiction(item)
        if item["properties"].get("earthsearch:boa_offset_applied") is True:
            assert offset == 0.0 and said is not None and "contradicts itself" in said
            contradicting += 1
        else:  # sentinel-2-c1-l2a, baseline 05.11: the rule and raster:bands agree on -0.1
            assert offset == pytest.approx(-0.1) and said is None
            consistent += 1
    assert contradicting == 7 and consistent >= 6


def test_hls_fmask_masks_high_aerosol_only() -> None:
    mask = load_registry().collection("HLSS30_2.0", "cmr-stac-lpcloud").mask
    qa = np.array([0b0000_0000, 0b0100_0000, 0b1000_0000, 0b1100_0000, 0b0000_0010, 255], dtype=np.uint8)
    assert mask.invalid(qa).tolist() == [False, False, False, True, True, True]
    assert "bits 6-7 in ['11']" in load_registry().collection("HLSS30_2.0").mask_description()

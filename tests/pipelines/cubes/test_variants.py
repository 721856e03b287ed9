"""Landsat 4/5/7 next to 8/9: one collection, a band set per instrument, chosen by the item's platform."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.cubes import CubeSpec, CubeStore, write_cubes
from pipelines.registry import CollectionSpec, load_registry
from pipelines.testing import make_item
from tests.pipelines.cubes.support import GRID, SCENE, TILE_IDS

LANDSAT = "landsat-c2-l2"


def _entry(cs: CollectionSpec, catalog: str) -> dict[str, Any]:
    mask = {"kind": cs.mask.kind, "asset": cs.mask.asset, "invalid_bits": list(cs.mask.invalid_bits)}
    return {
        "catalog": catalog,
        "collection": cs.collection,
        "sensor": cs.sensor.name,
        "platforms": list(cs.platforms),
        "dtype": cs.dtype,
        "nodata": cs.nodata,
        "scale": cs.scale,
        "offset": cs.offset,
        "assets": dict(cs.assets),
        "mask": {**mask, "fill_value": cs.mask.fill_value},
    }


def test_builtin_landsat_band_sets_by_platform() -> None:
    reg = load_registry()
    for catalog in ("planetary-computer", "earth-search"):
        oli, tm, etm = reg.variants(LANDSAT, catalog)
        assert (oli.sensor.name, tm.sensor.name, etm.sensor.name) == (
            "landsat-oli",
            "landsat-tm",
            "landsat-etm",
        )
        assert reg.collection(LANDSAT, catalog) is oli  # the default band set
        item = {"properties": {"platform": "landsat-5"}}
        assert [v.sensor.name for v in (oli, tm, etm) if v.serves(item)] == ["landsat-tm"]
        assert etm.serves({"properties": {"platform": "LANDSAT-7"}}) and not etm.serves(item)
    assert reg.sensor("landsat-tm").band("B1").common_name == "blue"


def test_tm_and_oli_items_make_their_own_groups_and_unknown_platforms_are_recorded(tmp_path: Path) -> None:
    pc = load_registry().variants(LANDSAT, "planetary-computer")
    reg = tmp_path / "reg.yaml"
    doc = {
        "catalogs": {"test-ls": {"kind": "local"}},
        "collections": [_entry(cs, "test-ls") for cs in pc[:2]],
    }
    reg.write_text(json.dumps(doc))
    oli, tm = load_registry([reg]).variants(LANDSAT, "test-ls")
    items = []
    for item_id, cs, platform in (("L8", oli, "landsat-8"), ("L5", tm, "landsat-5"), ("L7", tm, "landsat-7")):
        item = make_item(tmp_path / "src", item_id=item_id, collection=LANDSAT, bounds=SCENE, spec=cs)
        item["properties"]["platform"] = platform
        items.append(item)
    items[2]["properties"]["datetime"] = "2003-06-01T10:30:00Z"
    spec = CubeSpec(grid=GRID, collections=(LANDSAT,), catalog="test-ls", registry_files=(str(reg),))
    out = tmp_path / "cubes"
    summary = write_cubes(items, [TILE_IDS[0]], spec, str(out), progress=False)
    assert summary.tiles_done == [TILE_IDS[0]], summary.tiles_failed
    cube = CubeStore(str(out)).open_tile(TILE_IDS[0])
    assert sorted(cube) == [(LANDSAT, "30m"), (LANDSAT, "30m-landsat-tm")]
    tm_ds, oli_ds = cube[(LANDSAT, "30m-landsat-tm")], cube[(LANDSAT, "30m")]
    assert tm_ds.attrs["sensor"] == "landsat-tm" and list(tm_ds["band"].values) == [
        "B1",
        "B2",
        "B3",
        "B4",
        "B5",
        "B7",
    ]
    assert np.allclose(tm_ds["center_wavelength_nm"].values, [485, 560, 660, 830, 1650, 2215])
    assert list(tm_ds["source_items"].values) == ["L5"] and list(oli_ds["source_items"].values) == ["L8"]
    assert oli_ds["center_wavelength_nm"].values[0] == np.float32(443.0)
    (skip,) = [s for s in summary.items_skipped if s["item"] == "L7"]
    assert "platform 'landsat-7' has no band set" in skip["reason"]

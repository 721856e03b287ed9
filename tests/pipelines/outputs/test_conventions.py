"""One builder of the proj:/spatial: Zarr convention attributes for every store that writes a grid:
valid against the published schemas whatever the CRS (an EPSG code, a CRS without one, none)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from pipelines.outputs import (
    PROJ_CONVENTION,
    SPATIAL_CONVENTION,
    dataset_convention_attrs,
    geo_convention_attrs,
)
from pipelines.testing.schemas import (
    ZARR_CONVENTIONS_SCHEMA,
    ZARR_PROJ_SCHEMA,
    ZARR_SPATIAL_SCHEMA,
    SchemaSet,
)

LAEA = "+proj=laea +lat_0=47.5 +lon_0=12.25 +x_0=0 +y_0=0 +ellps=GRS80 +units=m +no_defs"  # no EPSG code


def _node(attrs: dict) -> dict:
    return {"zarr_format": 3, "node_type": "group", "attributes": attrs}


@pytest.fixture(scope="module")
def schemas() -> SchemaSet:
    found = SchemaSet.find()
    if found is None:
        pytest.skip("published schemas not found at ../shared/schemas (or $AOM_SCHEMAS_DIR)")
    return found


def test_epsg_wkt2_and_no_crs_are_each_valid(schemas: SchemaSet) -> None:
    t = [10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0]
    epsg = geo_convention_attrs(32631, t, (3, 4))
    assert epsg["proj:code"] == "EPSG:32631"
    assert epsg["spatial:bbox"] == [500_000.0, 3_999_970.0, 500_040.0, 4_000_000.0]
    wkt = geo_convention_attrs(LAEA, t, (3, 4))
    assert "proj:code" not in wkt and wkt["proj:wkt2"].startswith("PROJCRS")
    for attrs in (epsg, wkt):
        assert [c["uuid"] for c in attrs["zarr_conventions"]] == [
            PROJ_CONVENTION["uuid"],
            SPATIAL_CONVENTION["uuid"],
        ]
        for url in (ZARR_PROJ_SCHEMA, ZARR_SPATIAL_SCHEMA, ZARR_CONVENTIONS_SCHEMA):
            assert schemas.errors(_node(attrs), url) == [], url
    # a grid without a CRS registers spatial: only (proj: needs a code, WKT2 or PROJJSON)
    bare = geo_convention_attrs(None, t, (3, 4))
    assert [c["uuid"] for c in bare["zarr_conventions"]] == [SPATIAL_CONVENTION["uuid"]]
    assert not any(k.startswith("proj:") for k in bare)
    assert schemas.errors(_node(bare), ZARR_SPATIAL_SCHEMA) == []
    # the check is real: registering proj: without a CRS (what single rasters without one wrote) fails
    bad = {**bare, "zarr_conventions": [dict(PROJ_CONVENTION), dict(SPATIAL_CONVENTION)]}
    assert schemas.errors(_node(bad), ZARR_PROJ_SCHEMA) != []


def test_a_dataset_without_a_geotransform_is_georeferenced_from_its_pixel_centres() -> None:
    ds = xr.Dataset(
        {"v": (("y", "x"), np.zeros((2, 3)))},
        coords={
            "x": [15.0, 45.0, 75.0],
            "y": [90.0, 60.0],
            "spatial_ref": ((), 0, {"crs_wkt": "EPSG:32633"}),
        },
    )
    attrs = dataset_convention_attrs(ds)
    assert attrs["spatial:transform"] == [30.0, 0.0, 0.0, 0.0, -30.0, 105.0]
    assert attrs["proj:code"] == "EPSG:32633" and attrs["spatial:shape"] == [2, 3]
    assert dataset_convention_attrs(ds.drop_dims("x")) == {}  # no grid, nothing said

"""Georeferencing of Zarr outputs as the registered ``proj:`` / ``spatial:`` Zarr conventions.

One builder for every store that writes a grid (cube groups, embedding zones and tile grids, single
embedding rasters), so they all say the same thing the same way: the node's ``zarr_conventions``
registers each convention it uses (the zarr-conventions spec: one entry per convention, fields fixed
by the convention's schema), ``proj:code`` (``proj:wkt2`` for a CRS without an EPSG code) and
``spatial:dimensions/shape/transform/bbox/registration``. Validated against the published schemas
(``../shared/schemas/zarr-conventions``) in the tests of each store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PROJ_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-experimental/geo-proj/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-experimental/geo-proj/blob/v1/README.md",
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    "name": "proj:",
    "description": "Coordinate reference system information for geospatial data",
}


SPATIAL_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v0.1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v0.1/README.md",
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    "name": "spatial",
    "description": "Spatial coordinate information",
}


def geo_convention_attrs(
    crs: Any,
    transform: Sequence[float],
    shape: Sequence[int],
    dimensions: Sequence[str] = ("y", "x"),
) -> dict[str, Any]:
    """The ``proj:`` / ``spatial:`` attributes of a node holding a grid, both conventions registered.

    ``crs``: an EPSG code (int), anything :meth:`pyproj.CRS.from_user_input` takes, or ``None`` (then
    only ``spatial:`` is written and registered: ``proj:`` needs a CRS). ``transform``: the affine
    ``[a, b, c, d, e, f]`` (rasterio/``affine`` order: ``x = a*col + b*row + c``, ``y = d*col + e*row + f``,
    of pixel corners). ``shape``: ``(rows, cols)`` along ``dimensions``. ``spatial:bbox`` is the
    extent of the pixel corners.
    """
    a, b, c, d, e, f = (float(v) for v in transform)
    rows, cols = (int(n) for n in shape)
    xs = [c, a * cols + c, b * rows + c, a * cols + b * rows + c]
    ys = [f, d * cols + f, e * rows + f, d * cols + e * rows + f]
    out: dict[str, Any] = {
        "zarr_conventions": [dict(SPATIAL_CONVENTION)],
        "spatial:dimensions": [str(n) for n in dimensions],
        "spatial:shape": [rows, cols],
        "spatial:transform": [a, b, c, d, e, f],
        "spatial:bbox": [min(xs), min(ys), max(xs), max(ys)],
        "spatial:registration": "pixel",
    }
    code = proj_attrs(crs)
    if code:
        out["zarr_conventions"].insert(0, dict(PROJ_CONVENTION))
        out.update(code)
    return out


def proj_attrs(crs: Any) -> dict[str, str]:
    """``{"proj:code": "EPSG:n"}``, ``{"proj:wkt2": ...}`` for a CRS without an EPSG code, ``{}`` for None."""
    if crs is None:
        return {}
    if isinstance(crs, int):
        return {"proj:code": f"EPSG:{crs}"}
    import pyproj

    p = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    epsg = p.to_epsg()
    return {"proj:code": f"EPSG:{epsg}"} if epsg else {"proj:wkt2": p.to_wkt()}


def dataset_convention_attrs(ds: Any, grid_mapping: str = "spatial_ref") -> dict[str, Any]:
    """:func:`geo_convention_attrs` of an xarray Dataset on a CF grid (dims ``y``, ``x``): the CRS from
    its grid mapping variable's ``crs_wkt`` (or ``spatial_ref``), the transform from that variable's
    GDAL ``GeoTransform``, else from the regularly spaced ``x``/``y`` pixel-centre coordinates; ``{}``
    when the Dataset has no such grid (nothing to georeference)."""
    if "y" not in ds.dims or "x" not in ds.dims:
        return {}
    gm = ds.variables.get(grid_mapping)
    attrs = dict(gm.attrs) if gm is not None else {}
    crs = attrs.get("crs_wkt") or attrs.get("spatial_ref")
    gt = str(attrs.get("GeoTransform") or "").split()
    if len(gt) == 6:
        c, a, b, f, d, e = (float(v) for v in gt)
    elif ds.sizes["x"] > 1 and ds.sizes["y"] > 1 and "x" in ds.coords and "y" in ds.coords:
        x = ds["x"].values.astype("float64")
        y = ds["y"].values.astype("float64")
        a, b, d, e = float(x[1] - x[0]), 0.0, 0.0, float(y[1] - y[0])
        c, f = float(x[0]) - a / 2, float(y[0]) - e / 2
    else:
        return {}
    return geo_convention_attrs(crs or None, [a, b, c, d, e, f], (ds.sizes["y"], ds.sizes["x"]))

"""Exports: a selection to a Cloud-Optimised GeoTIFF, or to GeoParquet vectors with geometries.

Example::

    from pipelines.query import open_embeddings, export

    emb = open_embeddings("/data/emb")
    export(emb, (5.95, 44.98, 6.05, 45.02), "area.tif")         # one band per embedding dimension
    export(emb, (5.95, 44.98, 6.05, 45.02), "area.parquet")     # one row per token, WKB point + vector

A GeoTIFF is an embedding COG, the product ``aom publish`` writes per tile
(:func:`pipelines.embeddings.write_embedding_cog`): bands ``emb_0000 .. emb_{dim-1}``, float32 with NaN
nodata (or ``dtype="int8"``: the int8-sqrt codes, -128 nodata), the decoding rule in the
``AOM_ENCODING`` tag, provenance in ``AOM_VERSION``/``AOM_MODEL``/``AOM_CHECKPOINT_SHA256``/``AOM_TIME``/
``AOM_ZONES``; resampled onto one grid in the target CRS.
GeoParquet is **not resampled**: one row per stored token (a ground location is counted once: in
its own UTM zone where that zone has a valid token there, else in the zone that has it), GeoParquet 1.1 with a
WKB ``geometry`` column (the token centre, or with ``geometry="polygon"`` the token's square
footprint, transformed to the target CRS: OGC:CRS84 by default), the CRS as PROJJSON in the ``geo``
metadata, plus ``epsg``, ``x``/``y`` (zone CRS), ``row``/``col`` (zone grid), ``tile_id``,
``area_m2`` and a fixed-size-list ``embedding`` column.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import xarray as xr
from pyproj import CRS

from pipelines import storage
from pipelines.embeddings import provenance_tags, quantize, raster_encoding, write_cog, write_embedding_cog
from pipelines.outputs import check_file_output
from pipelines.query.open import Embeddings, QueryError, TimeLike
from pipelines.query.select import DEFAULT_MAX_TOKENS, parse_crs, select


def _transform(xs: np.ndarray, ys: np.ndarray, resolution: float) -> Any:
    from affine import Affine

    rx = float(xs[1] - xs[0]) if xs.size > 1 else resolution
    ry = float(ys[0] - ys[1]) if ys.size > 1 else resolution
    return Affine(rx, 0.0, float(xs[0]) - rx / 2, 0.0, -ry, float(ys[0]) + ry / 2)


def write_raster(
    out: str,
    data: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    crs: CRS,
    *,
    nodata: float | int | None,
    descriptions: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
    colormap: Mapping[int, tuple[int, int, int, int]] | None = None,
    category_names: Sequence[str] | None = None,
    resolution: float = 1.0,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write a derived map ``data`` (``[bands, h, w]`` or ``[h, w]``; token centres ``xs``, ``ys``) as a
    COG to a local path or any fsspec URL (:func:`pipelines.embeddings.write_cog`: deflate, tiled,
    overviews, atomic). ``category_names`` (value ``i`` is ``category_names[i]``) of a one-band class
    map go into GDAL's ``<out>.aux.xml`` beside it (:func:`class_aux_xml`: category names + a thematic
    raster attribute table with the colours), which GDAL, QGIS and ArcGIS read with the file; the
    colour table is inside the COG. Embedding COGs are :func:`to_geotiff`'s."""
    url = storage.normalise_url(out)
    if category_names is not None and (data.ndim == 2 or data.shape[0] == 1):
        # sidecar first: the COG appears complete
        aux = class_aux_xml(category_names, colormap or {}, nodata)
        storage.write_bytes_atomic(f"{url}.aux.xml", aux.encode(), storage_options)
    write_cog(
        url,
        data,
        crs.to_wkt(),
        _transform(xs, ys, resolution),
        nodata,
        tags,
        descriptions,
        storage_options=storage_options,
        colormap=colormap,
    )
    return out


def class_aux_xml(
    names: Sequence[str],
    colormap: Mapping[int, tuple[int, int, int, int]],
    nodata: float | int | None,
) -> str:
    """GDAL PAM document for band 1 of a class map: ``CategoryNames`` (entry ``i`` names value ``i``) and
    a thematic raster attribute table (Value, Class, Red, Green, Blue, Alpha)."""
    from xml.sax.saxutils import escape

    cats = "".join(f"<Category>{escape(str(n))}</Category>" for n in names)
    fields = [
        ("Value", 0, 5),
        ("Class", 2, 2),
        ("Red", 0, 6),
        ("Green", 0, 7),
        ("Blue", 0, 8),
        ("Alpha", 0, 9),
    ]
    defs = "".join(
        f'<FieldDefn index="{i}"><Name>{n}</Name><Type>{t}</Type><Usage>{u}</Usage></FieldDefn>'
        for i, (n, t, u) in enumerate(fields)
    )
    rows = []
    for v, name in enumerate(names):
        r, g, b, a = colormap.get(v, (0, 0, 0, 255))
        cells = "".join(f"<F>{escape(str(c))}</F>" for c in (v, name, r, g, b, a))
        rows.append(f'<Row index="{v}">{cells}</Row>')
    nd = f"<NoDataValue>{nodata}</NoDataValue>" if nodata is not None else ""
    return (
        '<PAMDataset><PAMRasterBand band="1">'
        f"{nd}<CategoryNames>{cats}</CategoryNames>"
        f'<GDALRasterAttributeTable tableType="thematic">{defs}{"".join(rows)}</GDALRasterAttributeTable>'
        '<Metadata><MDI key="CLASS_NAMES">' + escape(",".join(names)) + "</MDI></Metadata>"
        "</PAMRasterBand></PAMDataset>\n"
    )


def _provenance(attrs: Mapping[str, Any]) -> dict[str, str]:
    """The provenance tags (:func:`pipelines.embeddings.provenance_tags`) of a selection or map."""
    model = " ".join(str(attrs[k]) for k in ("model", "model_version") if attrs.get(k))
    zones = ",".join(str(z) for z in attrs.get("zones", []))
    return provenance_tags(
        str(attrs.get("version", "")),
        model,
        str(attrs.get("checkpoint_sha256", "")),
        str(attrs.get("time", "")),
        **({"zones": zones} if zones else {}),
    )


def to_geotiff(
    sel: xr.DataArray,
    out: str,
    *,
    dtype: Literal["float32", "int8"] = "float32",
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """A selection ``(y, x, dim)`` to an embedding COG, the product ``aom publish`` writes per tile
    (:func:`pipelines.embeddings.write_embedding_cog`: bands ``emb_0000``..., tags ``AOM_EMBEDDINGS``,
    ``AOM_ENCODING``, ``AOM_VERSION``, ``AOM_MODEL``, ``AOM_CHECKPOINT_SHA256``, ``AOM_TIME``,
    ``AOM_ZONES``): float32 vectors with NaN nodata, or (``dtype="int8"``) the int8-sqrt codes with
    -128 nodata. Any ``(y, x)`` / ``(y, x, band)`` map is written as a float32 COG, NaN nodata, with
    the same provenance tags (not an embedding COG: no ``AOM_EMBEDDINGS``, no band names)."""
    vals = np.asarray(sel.values)
    crs = parse_crs(sel.attrs["crs"])
    xs, ys = sel["x"].values, sel["y"].values
    res = float(sel.attrs.get("resolution", 1.0))
    if vals.ndim == 3 and sel.dims[-1] == "dim":
        enc = raster_encoding(dtype)
        codes = quantize(vals) if dtype == "int8" else vals.astype(np.float32)
        write_embedding_cog(
            storage.normalise_url(out),
            np.ascontiguousarray(np.moveaxis(codes, -1, 0)),
            crs.to_wkt(),
            _transform(xs, ys, res),
            enc,
            _provenance(sel.attrs),
            storage_options,
        )
        return out
    if dtype == "int8":
        raise QueryError("dtype='int8' applies to embedding selections (y, x, dim) only")
    data = np.moveaxis(vals, -1, 0) if vals.ndim == 3 else vals
    return write_raster(
        out,
        data.astype(np.float32),
        xs,
        ys,
        crs,
        nodata=float("nan"),
        tags=_provenance(sel.attrs),
        resolution=res,
        storage_options=storage_options,
    )


def _geo_metadata(crs: CRS, geometry_type: str, bbox: Sequence[float]) -> dict[str, Any]:
    return {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": [geometry_type],
                "crs": crs.to_json_dict(),
                "bbox": [float(v) for v in bbox],
            }
        },
    }


def _geoparquet_crs(crs: CRS) -> CRS:
    """Geographic WGS 84 is written as OGC:CRS84 (GeoParquet coordinates are always lon, lat)."""
    return CRS.from_user_input("OGC:CRS84") if crs.is_geographic and crs.to_epsg() == 4326 else crs


def _write_table_atomic(table: Any, url: str, storage_options: Mapping[str, Any] | None) -> None:
    """A Parquet file (zstd) that appears whole or not at all: serialised in memory, then one atomic
    write (a temporary file renamed locally, one PUT on object storage)."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes_atomic(url, buf.getvalue(), storage_options)


def write_points_geoparquet(
    url: str,
    x: np.ndarray,
    y: np.ndarray,
    crs: CRS,
    columns: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None = None,
    *,
    embedding: np.ndarray | None = None,
    polygon_half_size: float | None = None,
) -> str:
    """GeoParquet 1.1 file of points (or squares of ``2 * polygon_half_size``) at ``x, y`` in ``crs``."""
    import pyarrow as pa
    import shapely

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if polygon_half_size:
        d = polygon_half_size
        geoms = shapely.box(x - d, y - d, x + d, y + d)
        gtype = "Polygon"
        bbox = [x.min() - d, y.min() - d, x.max() + d, y.max() + d] if x.size else [0, 0, 0, 0]
    else:
        geoms = shapely.points(x, y)
        gtype = "Point"
        bbox = [x.min(), y.min(), x.max(), y.max()] if x.size else [0, 0, 0, 0]
    arrays: dict[str, Any] = {"geometry": pa.array(shapely.to_wkb(geoms).tolist(), type=pa.binary())}
    for k, v in columns.items():
        arrays[k] = pa.array(v)
    if embedding is not None:
        emb = np.ascontiguousarray(embedding)
        arrays["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    table = pa.table(arrays)
    meta = dict(table.schema.metadata or {})
    meta[b"geo"] = storage.json_dumps(_geo_metadata(_geoparquet_crs(crs), gtype, bbox)).encode()
    table = table.replace_schema_metadata(meta)
    _write_table_atomic(table, url, storage_options)
    return url


def to_geoparquet(
    sel: xr.DataArray,
    out: str,
    *,
    geometry: Literal["point", "polygon"] = "point",
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Every valid token of a selection ``(y, x, dim)`` as a row: geometry (selection CRS), x, y,
    time, embedding (float32 list)."""
    vals = np.asarray(sel.values, dtype=np.float32)
    if vals.ndim != 3:
        raise QueryError("to_geoparquet expects an embeddings selection (y, x, dim)")
    d = vals.shape[-1]
    xx, yy = np.meshgrid(sel["x"].values, sel["y"].values)
    flat = vals.reshape(-1, d)
    valid = np.isfinite(flat).all(axis=1)
    res = float(sel.attrs.get("resolution", 1.0))
    n = int(valid.sum())
    return write_points_geoparquet(
        out,
        xx.ravel()[valid],
        yy.ravel()[valid],
        parse_crs(sel.attrs["crs"]),
        {
            "x": xx.ravel()[valid],
            "y": yy.ravel()[valid],
            "time": [str(sel.attrs.get("time", ""))] * n,
            "version": [str(sel.attrs.get("version", ""))] * n,
        },
        storage_options,
        embedding=flat[valid],
        polygon_half_size=res / 2 if geometry == "polygon" else None,
    )


def tokens_geoparquet(
    emb: Embeddings,
    bbox: str | Sequence[float],
    out: str,
    crs: Any = "EPSG:4326",
    *,
    time: TimeLike = None,
    target_crs: Any = None,
    geometry: Literal["point", "polygon"] = "polygon",
    storage_options: Mapping[str, Any] | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> str:
    """Every stored valid token whose centre lies in ``bbox`` as one GeoParquet row (module docstring).
    Built in memory: zone windows of more than ``max_tokens`` tokens in all are refused before reading."""
    import shapely
    from pyproj import Transformer

    from pipelines.query.select import SelectionTooLargeError, natural_epsg, parse_bbox, zone_windows

    crs_obj = parse_crs(crs)
    box = parse_bbox(bbox)
    ti = emb.time_index(time)
    target = parse_crs(target_crs) if target_crs is not None else CRS.from_epsg(4326)
    wins = zone_windows(emb, box, crs_obj, ti)
    if not wins:
        raise QueryError(f"bbox {box} ({crs_obj.to_string()}) holds no complete tile at time {emb.times[ti]}")
    n = sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in wins.values())
    if n > max_tokens:
        raise SelectionTooLargeError(
            f"selection of {n} tokens ({len(wins)} zone window(s)) exceeds max_tokens={max_tokens} (it would "
            "be loaded into memory whole); pass a smaller bbox (--bbox), or raise max_tokens (Python argument)"
        )
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("epsg", "x", "y", "row", "col", "geom", "emb")}
    tile_ids: list[str] = []
    # only recorded tiles count (read_recorded): [h, w, dim] per zone, NaN = no data
    windows = {
        e: emb.read_recorded(e, ti, slice(r0, r1), slice(c0, c1)) for e, (r0, r1, c0, c1) in wins.items()
    }
    for epsg, (r0, r1, c0, c1) in wins.items():
        g = emb.grid(epsg)
        r = g.token_ground_m
        window = windows[epsg]
        rows, cols = np.mgrid[r0:r1, c0:c1]
        xs, ys = g.token_centres(rows, cols)
        keep = np.isfinite(window[..., 0])
        bx, by = Transformer.from_crs(epsg, crs_obj, always_xy=True).transform(xs, ys)
        keep &= (bx >= box[0]) & (bx <= box[2]) & (by >= box[1]) & (by <= box[3])
        lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(xs, ys)
        own = natural_epsg(np.asarray(lon), np.asarray(lat))
        for other in wins:  # one row per ground location: its own zone's token where that zone has one
            if other != epsg:
                m = keep & (own == other)
                m[m] = _has_token(emb, other, wins[other], windows[other], xs[m], ys[m], epsg)
                keep &= ~m
        to_target = Transformer.from_crs(epsg, target, always_xy=True)
        x, y = xs[keep], ys[keep]
        if geometry == "polygon":
            h = r / 2
            cx = np.stack([x - h, x + h, x + h, x - h, x - h], axis=1)
            cy = np.stack([y - h, y - h, y + h, y + h, y - h], axis=1)
            tx, ty = to_target.transform(cx, cy)
            geoms = shapely.polygons(np.stack([np.asarray(tx), np.asarray(ty)], axis=-1))
        else:
            tx, ty = to_target.transform(x, y)
            geoms = shapely.points(np.asarray(tx), np.asarray(ty))
        parts["epsg"].append(np.full(x.size, epsg, np.int32))
        parts["x"].append(x)
        parts["y"].append(y)
        parts["row"].append(rows[keep])
        parts["col"].append(cols[keep])
        parts["geom"].append(geoms)
        parts["emb"].append(window[keep])
        tiles = emb.version.tile_size_m
        ix = np.floor((x - r / 2) / tiles + 1e-9).astype(np.int64)
        iy = np.floor((y - r / 2) / tiles + 1e-9).astype(np.int64)
        tile_ids += [f"{epsg}_{a}_{b}" for a, b in zip(ix.tolist(), iy.tolist())]
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    n = int(cat["x"].size)
    return write_geometries_geoparquet(
        out,
        cat["geom"],
        "Polygon" if geometry == "polygon" else "Point",
        target,
        {
            "epsg": cat["epsg"],
            "x": cat["x"],
            "y": cat["y"],
            "row": cat["row"].astype(np.int64),
            "col": cat["col"].astype(np.int64),
            "tile_id": tile_ids,
            "area_m2": np.full(n, emb.token_ground_m**2),
            "time": [emb.times[ti]] * n,
            "version": [emb.name] * n,
        },
        storage_options,
        embedding=cat["emb"].reshape(n, emb.dim),
    )


def _has_token(
    emb: Embeddings,
    epsg: int,
    win: tuple[int, int, int, int],
    window: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    src_epsg: int,
) -> np.ndarray:
    """For points ``x, y`` (``src_epsg``): does zone ``epsg``'s ``window`` (``win``: row0, row1, col0,
    col1; NaN = no data) hold a valid token at each of them?"""
    from pyproj import Transformer

    g = emb.grid(epsg)
    sx, sy = Transformer.from_crs(src_epsg, epsg, always_xy=True).transform(x, y)
    col = np.floor((np.asarray(sx) - g.x0) / g.token_ground_m).astype(np.int64) - win[2]
    row = np.floor((g.y1 - np.asarray(sy)) / g.token_ground_m).astype(np.int64) - win[0]
    inside = (row >= 0) & (row < window.shape[0]) & (col >= 0) & (col < window.shape[1])
    out = np.zeros(x.shape, dtype=bool)
    out[inside] = np.isfinite(window[row[inside], col[inside], 0])
    return out


def write_geometries_geoparquet(
    url: str,
    geoms: np.ndarray,
    geometry_type: str,
    crs: CRS,
    columns: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None = None,
    *,
    embedding: np.ndarray | None = None,
) -> str:
    """GeoParquet 1.1 file of shapely ``geoms`` (one geometry type) in ``crs`` plus ``columns``."""
    import pyarrow as pa
    import shapely

    bounds = shapely.total_bounds(geoms) if len(geoms) else np.zeros(4)
    arrays: dict[str, Any] = {"geometry": pa.array(shapely.to_wkb(geoms).tolist(), type=pa.binary())}
    for k, v in columns.items():
        arrays[k] = pa.array(v)
    if embedding is not None:
        emb = np.ascontiguousarray(embedding)
        arrays["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    table = pa.table(arrays)
    meta = dict(table.schema.metadata or {})
    meta[b"geo"] = storage.json_dumps(
        _geo_metadata(_geoparquet_crs(crs), geometry_type, [float(b) for b in bounds])
    ).encode()
    table = table.replace_schema_metadata(meta)
    _write_table_atomic(table, url, storage_options)
    return url


def export(
    emb: Embeddings,
    bbox: str | Sequence[float],
    out: str,
    crs: Any = "EPSG:4326",
    *,
    time: TimeLike = None,
    target_crs: Any = None,
    fmt: Literal["geotiff", "geoparquet"] | None = None,
    dtype: Literal["float32", "int8"] = "float32",
    geometry: Literal["point", "polygon"] = "point",
    storage_options: Mapping[str, Any] | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> str:
    """Write ``bbox`` as a COG (``.tif``/``.tiff``: selected and resampled onto one grid) or as GeoParquet
    (``.parquet``/``.geoparquet``: one row per stored token, :func:`tokens_geoparquet`). A COG is built
    in memory: a selection above ``max_tokens`` is refused before anything is read (:func:`select`)."""
    if fmt is None:
        ext = out.lower().rsplit(".", 1)[-1]
        if ext in ("tif", "tiff"):
            fmt = "geotiff"
        elif ext in ("parquet", "geoparquet", "pq"):
            fmt = "geoparquet"
        else:
            raise QueryError(
                f"cannot tell the format of {out!r}: use .tif/.tiff (COG) or .parquet (GeoParquet)"
            )
    check_file_output(out, [emb.url], storage_options)  # never a folder, a bucket root or the store
    if fmt == "geoparquet":
        return tokens_geoparquet(
            emb,
            bbox,
            out,
            crs,
            time=time,
            target_crs=target_crs,
            geometry=geometry,
            storage_options=storage_options,
            max_tokens=max_tokens,
        )
    if fmt != "geotiff":
        raise QueryError(f"unknown export format {fmt!r}; choose geotiff or geoparquet")
    sel = select(emb, bbox, crs, time=time, target_crs=target_crs, max_tokens=max_tokens)
    return to_geotiff(sel, out, dtype=dtype, storage_options=storage_options)

"""Maps of an area: PCA -> RGB composites and similarity heatmaps, as PNG with coordinates + scale bar.

Example::

    from pipelines.query import open_embeddings, pca_map, similarity_heatmap

    emb = open_embeddings("/data/emb")
    pca_map(emb, (5.95, 44.98, 6.05, 45.02), "pca.png")                       # lon/lat bbox
    similarity_heatmap(emb, (5.95, 44.98, 6.05, 45.02), "sim.png", lon=5.99, lat=45.0)

The PCA is fitted on (a sample of) the valid tokens of the area itself, so colours are relative
to that area: similar colours = similar embeddings; they are not comparable between two maps.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from pyproj import Transformer

from pipelines import storage
from pipelines.outputs import check_file_output
from pipelines.query.open import Embeddings, QueryError, TimeLike
from pipelines.query.select import (
    DEFAULT_MAX_TOKENS,
    check_tokens,
    geo_dataarray,
    parse_crs,
    select,
    selection_shape,
)
from pipelines.query.similarity import Whitening, metric_whitening, query_vector


def pca_rgb(
    sel: xr.DataArray, *, n_sample: int = 100_000, seed: int = 0, stretch: tuple[float, float] = (2.0, 98.0)
) -> xr.DataArray:
    """First three principal components of ``sel (y, x, dim)`` as an RGB image ``(y, x, band)`` in 0..1
    (NaN where there is no data). ``attrs['explained_variance_ratio']`` gives the three ratios."""
    vals = np.asarray(sel.values, dtype=np.float32)
    h, w, d = vals.shape
    flat = vals.reshape(-1, d)
    valid = np.isfinite(flat).all(axis=1)
    if valid.sum() < 3:
        raise QueryError("the selection has fewer than 3 valid tokens: nothing to map")
    x = flat[valid]
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(x.shape[0], n_sample, replace=False)] if x.shape[0] > n_sample else x
    mean = sample.mean(axis=0)
    _, sv, vt = np.linalg.svd(sample - mean, full_matrices=False)
    comps = vt[:3]
    comps = comps * np.sign(comps[np.arange(comps.shape[0]), np.abs(comps).argmax(axis=1)])[:, None]
    proj = (x - mean) @ comps.T
    if proj.shape[1] < 3:
        proj = np.pad(proj, ((0, 0), (0, 3 - proj.shape[1])))
    lo, hi = np.percentile(proj, stretch, axis=0)
    rgb = np.clip((proj - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    out = np.full((h * w, 3), np.nan, dtype=np.float32)
    out[valid] = rgb
    var = sv**2
    ratio = (var[:3] / var.sum()).tolist() if var.sum() > 0 else [0.0, 0.0, 0.0]
    attrs = {k: v for k, v in sel.attrs.items() if k != "grid_mapping"} | {"explained_variance_ratio": ratio}
    return geo_dataarray(
        out.reshape(h, w, 3),
        sel["x"].values,
        sel["y"].values,
        parse_crs(sel.attrs["crs"]),
        attrs,
        ("y", "x", "band"),
    )


def cosine_map(sel: xr.DataArray, query: np.ndarray, whitening: Whitening | None = None) -> xr.DataArray:
    """Cosine similarity of every token of ``sel (y, x, dim)`` to a query vector: ``(y, x)`` float32.
    With ``whitening`` the tokens are whitened first and ``query`` lives in the whitened space."""
    vals = np.asarray(sel.values, dtype=np.float32)
    if whitening is not None:  # NaN tokens stay NaN
        vals = whitening.apply(vals)
    q = np.asarray(query, dtype=np.float32)
    q = q / np.linalg.norm(q)
    norms = np.linalg.norm(vals, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = (vals @ q) / norms
    sim = np.where(norms > 0, sim, np.nan).astype(np.float32)
    name = "cosine similarity" if whitening is None else "whitened cosine similarity"
    attrs = {k: v for k, v in sel.attrs.items() if k != "grid_mapping"} | {"long_name": name}
    return geo_dataarray(
        sim, sel["x"].values, sel["y"].values, parse_crs(sel.attrs["crs"]), attrs, ("y", "x")
    )


def similarity_map(
    emb: Embeddings,
    bbox: str | Sequence[float],
    crs: Any = "EPSG:4326",
    *,
    lon: float | Sequence[float] | None = None,
    lat: float | Sequence[float] | None = None,
    vectors: np.ndarray | None = None,
    time: TimeLike = None,
    target_crs: Any = None,
    metric: str = "cosine",
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> xr.DataArray:
    """Cosine similarity over ``bbox`` to the example locations / vectors (see :func:`query_vector`);
    ``metric="whitened"`` as in :func:`pipelines.query.similar` (fitted on a sample of the version).
    A selection above ``max_tokens`` is refused before anything is read (:func:`select`)."""
    ti = emb.time_index(time)
    check_tokens(*selection_shape(emb, bbox, crs, time=ti, target_crs=target_crs), max_tokens)
    whitening = metric_whitening(emb, ti, metric)
    q = query_vector(emb, lon=lon, lat=lat, vectors=vectors, time=ti, whitening=whitening)
    sel = select(emb, bbox, crs, time=ti, target_crs=target_crs, max_tokens=max_tokens)
    return cosine_map(sel, q, whitening)


def _nice_length(span: float) -> float:
    """A 1/2/5 x 10^n length close to a fifth of ``span``."""
    target = span / 5
    if target <= 0:
        return 1.0
    p = 10 ** math.floor(math.log10(target))
    return float(min((1, 2, 5, 10), key=lambda m: abs(m * p - target)) * p)


def render_png(
    img: xr.DataArray,
    out: str,
    *,
    title: str = "",
    cmap: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar_label: str | None = None,
    points: tuple[Sequence[float], Sequence[float]] | None = None,
    categories: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    dpi: int = 120,
) -> str:
    """Render a georeferenced ``(y, x)`` or ``(y, x, band=3)`` image to PNG (any fsspec URL).

    Axes show CRS coordinates (km for projected CRSs, degrees otherwise); a scale bar is drawn in
    the lower left; ``points`` (lon, lat) are marked.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    crs = parse_crs(img.attrs["crs"])
    xs, ys = img["x"].values, img["y"].values
    rx = float(xs[1] - xs[0]) if xs.size > 1 else float(img.attrs.get("resolution", 1.0))
    ry = float(ys[0] - ys[1]) if ys.size > 1 else float(img.attrs.get("resolution", 1.0))
    extent = (xs[0] - rx / 2, xs[-1] + rx / 2, ys[-1] - ry / 2, ys[0] + ry / 2)
    data = np.asarray(img.values)
    h, w = data.shape[:2]
    fig = Figure(figsize=(7.5, 7.5 * h / max(w, 1) + 0.9), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_facecolor("#d9d9d9")  # nodata shows as light grey
    if data.ndim == 3:
        rgba = np.concatenate(
            [np.nan_to_num(data, nan=0.0), np.isfinite(data[..., :1]).astype(np.float32)], axis=-1
        )
        ax.imshow(rgba, extent=extent, interpolation="nearest")
    else:
        im = ax.imshow(
            np.ma.masked_invalid(data),
            extent=extent,
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
        )
        cb = fig.colorbar(im, ax=ax, shrink=0.8)
        if colorbar_label:
            cb.set_label(colorbar_label)
        if categories is not None:
            cb.set_ticks(list(range(len(categories))))
            cb.set_ticklabels(list(categories))
    label = f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else crs.name
    if crs.is_projected:
        fmt = FuncFormatter(lambda v, _: f"{v / 1000:.1f}")
        ax.xaxis.set_major_formatter(fmt)
        ax.yaxis.set_major_formatter(fmt)
        ax.set_xlabel(f"easting (km, {label})")
        ax.set_ylabel(f"northing (km, {label})")
        bar = _nice_length(extent[1] - extent[0])
        bar_units = bar
    else:
        ax.set_xlabel(f"longitude (deg, {label})")
        ax.set_ylabel(f"latitude (deg, {label})")
        lat_c = (extent[2] + extent[3]) / 2
        m_per_deg = 111_320.0 * max(math.cos(math.radians(lat_c)), 1e-6)
        bar = _nice_length((extent[1] - extent[0]) * m_per_deg)
        bar_units = bar / m_per_deg
        ax.set_aspect(1.0 / max(math.cos(math.radians(lat_c)), 1e-6))
    text = f"{bar / 1000:g} km" if bar >= 1000 else f"{bar:g} m"
    ax.add_artist(
        AnchoredSizeBar(ax.transData, bar_units, text, "lower left", pad=0.4, frameon=True, size_vertical=0)
    )
    if points is not None:
        px, py = Transformer.from_crs(4326, crs, always_xy=True).transform(
            np.asarray(points[0]), np.asarray(points[1])
        )
        ax.scatter(
            np.atleast_1d(px),
            np.atleast_1d(py),
            marker="*",
            s=160,
            c="red",
            edgecolors="white",
            linewidths=1.0,
        )
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    check_file_output(out, storage_options=storage_options)  # never a folder or a bucket root
    storage.write_bytes_atomic(out, buf.getvalue(), storage_options)
    return out


def _title(kind: str, img: xr.DataArray) -> str:
    return f"{kind} - {img.attrs.get('version', '')} - {img.attrs.get('time', '')}"


def pca_map(
    emb: Embeddings,
    bbox: str | Sequence[float],
    out: str,
    crs: Any = "EPSG:4326",
    *,
    time: TimeLike = None,
    target_crs: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> str:
    """PCA -> RGB PNG of ``bbox``. Returns ``out``. A selection above ``max_tokens`` is refused
    before anything is read (:func:`select`)."""
    sel = select(emb, bbox, crs, time=time, target_crs=target_crs, max_tokens=max_tokens)
    rgb = pca_rgb(sel)
    ratio = ", ".join(f"{r:.0%}" for r in rgb.attrs["explained_variance_ratio"])
    return render_png(
        rgb, out, title=f"{_title('PCA RGB', rgb)} (variance {ratio})", storage_options=storage_options
    )


def similarity_heatmap(
    emb: Embeddings,
    bbox: str | Sequence[float],
    out: str,
    crs: Any = "EPSG:4326",
    *,
    lon: float | Sequence[float] | None = None,
    lat: float | Sequence[float] | None = None,
    vectors: np.ndarray | None = None,
    time: TimeLike = None,
    target_crs: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    metric: str = "cosine",
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> str:
    """Cosine-similarity heatmap PNG of ``bbox`` to example locations (marked) or vectors
    (``metric`` as in :func:`similarity_map`)."""
    sim = similarity_map(
        emb,
        bbox,
        crs,
        lon=lon,
        lat=lat,
        vectors=vectors,
        time=time,
        target_crs=target_crs,
        metric=metric,
        max_tokens=max_tokens,
    )
    label = str(sim.attrs["long_name"])
    pts = None
    if lon is not None and lat is not None:
        pts = (np.atleast_1d(np.asarray(lon, float)).tolist(), np.atleast_1d(np.asarray(lat, float)).tolist())
    return render_png(
        sim,
        out,
        title=_title(label, sim),
        cmap="magma",
        vmin=-1.0 if float(np.nanmin(sim.values)) < 0 else 0.0,
        vmax=1.0,
        colorbar_label=label,
        points=pts,
        storage_options=storage_options,
    )


__all__ = ["cosine_map", "pca_map", "pca_rgb", "render_png", "similarity_heatmap", "similarity_map"]

"""Few-shot mapping: labelled points or a label raster -> linear probe / kNN -> class map GeoTIFF.

Example::

    from pipelines.query import open_embeddings, classify

    emb = open_embeddings("/data/emb")
    res = classify(emb, "labels.geojson", out="classes.tif")      # label field auto-detected
    print(res.summary())                                           # CV accuracy, per-class counts
    res.class_map                                                  # xr.DataArray (y, x) uint8, 255 = nodata

Labels: GeoJSON (points, or polygons -> a representative point; RFC 7946 lon/lat unless a legacy
``crs`` member says otherwise), GeoParquet (WKB geometry, CRS from the ``geo`` metadata) or a
label raster (GeoTIFF; nodata pixels are unlabelled; ``CLASS_<value>=name`` tags name classes).
Each label takes the embedding of the token under it. Accuracy is stratified k-fold
cross-validation grouped by token (labels on one token stay in one fold; training labels within
``CV_BUFFER_TOKENS`` of a fold's test labels are left out, measured on the ground across UTM zone
borders), see :func:`fit_fewshot`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import xarray as xr
from pyproj import CRS

from pipelines import storage
from pipelines.embeddings import ZoneGrid, unit
from pipelines.query.export import write_raster
from pipelines.query.open import Embeddings, QueryError, TimeLike
from pipelines.query.select import (
    DEFAULT_MAX_TOKENS,
    SelectionTooLargeError,
    check_tokens,
    geo_dataarray,
    parse_crs,
    select,
    selection_shape,
    vectors_at,
)

LABEL_FIELDS = ("class", "label", "landcover", "land_cover", "category", "name")
NODATA_CLASS = 255
CV_BUFFER_TOKENS = 1
"""Training labels within this many tokens of a CV fold's test labels are left out of that fold."""
_PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


@dataclass
class Labels:
    """Labelled points in one CRS."""

    x: np.ndarray
    y: np.ndarray
    crs: CRS
    labels: np.ndarray
    source: str = ""

    @property
    def classes(self) -> list[str]:
        return sorted({str(v) for v in self.labels})

    def __len__(self) -> int:
        return int(self.labels.size)


def _pick_field(keys: Sequence[str], label_field: str | None, source: str) -> str:
    if label_field:
        if label_field not in keys:
            raise QueryError(f"label field {label_field!r} not in {source}; fields: {sorted(keys)}")
        return label_field
    for f in LABEL_FIELDS:
        if f in keys:
            return f
    raise QueryError(f"no label field in {source}: pass label_field, one of {sorted(keys)}")


def _points_of(geoms: Sequence[Any]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(index of the feature for each point, x, y): multipoints explode, areas -> representative point."""
    import shapely

    idx, xs, ys = [], [], []
    for i, g in enumerate(geoms):
        if g is None or g.is_empty:
            continue
        parts = list(g.geoms) if isinstance(g, shapely.MultiPoint) else [g]
        for p in parts:
            pt = p if isinstance(p, shapely.Point) else p.representative_point()
            idx.append(i)
            xs.append(pt.x)
            ys.append(pt.y)
    return idx, np.asarray(xs, float), np.asarray(ys, float)


def read_labels(
    url: str,
    label_field: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    *,
    max_raster_samples: int = 20_000,
    seed: int = 0,
) -> Labels:
    """Read labelled points from GeoJSON, GeoParquet or a label raster (by file extension)."""
    ext = url.lower().rsplit(".", 1)[-1]
    if not storage.exists(url, storage_options):
        raise QueryError(f"labels file {storage.redact_url(url)} does not exist")
    if ext not in ("geojson", "json", "parquet", "geoparquet", "pq", "tif", "tiff"):
        raise QueryError(f"unknown labels format {url!r}: use .geojson/.json, .parquet or .tif")
    try:
        if ext in ("geojson", "json"):
            return _read_geojson(url, label_field, storage_options)
        if ext in ("parquet", "geoparquet", "pq"):
            return _read_geoparquet(url, label_field, storage_options)
        return _read_raster(url, storage_options, max_raster_samples, seed)
    except QueryError:
        raise
    except Exception as exc:  # a broken file: one line naming it, not the reader's traceback
        reason = " ".join(storage.redact_url(str(exc)).split()) or type(exc).__name__
        raise QueryError(f"labels file {storage.redact_url(url)} cannot be read as {ext}: {reason}") from exc


def _read_geojson(url: str, label_field: str | None, storage_options: Mapping[str, Any] | None) -> Labels:
    from shapely.geometry import shape

    doc = storage.read_json(url, storage_options)
    feats = doc.get("features", [doc] if doc.get("type") == "Feature" else [])
    if not feats:
        raise QueryError(f"{url} has no GeoJSON features")
    keys = sorted(set().union(*[set((f.get("properties") or {}).keys()) for f in feats]))
    fld = _pick_field(keys, label_field, url)
    crs_name = ((doc.get("crs") or {}).get("properties") or {}).get("name")
    crs = parse_crs(crs_name) if crs_name else CRS.from_user_input("OGC:CRS84")
    geoms = [shape(f["geometry"]) if f.get("geometry") else None for f in feats]
    idx, xs, ys = _points_of(geoms)
    vals = [(feats[i].get("properties") or {}).get(fld) for i in idx]
    keep = np.array([v is not None for v in vals], dtype=bool)
    labels = np.array([str(v) for v in vals], dtype=object)
    return Labels(xs[keep], ys[keep], crs, labels[keep], url)


def _read_geoparquet(url: str, label_field: str | None, storage_options: Mapping[str, Any] | None) -> Labels:
    import pyarrow.parquet as pq
    import shapely

    fs, path = storage.filesystem(url, storage_options)
    with fs.open(path, "rb") as fh:
        table = pq.read_table(fh)
    meta = json.loads((table.schema.metadata or {}).get(b"geo", b"{}"))
    col = meta.get("primary_column", "geometry")
    if col not in table.column_names:
        raise QueryError(f"{url} has no geometry column {col!r} (is it GeoParquet?)")
    crs_json = (meta.get("columns", {}).get(col) or {}).get("crs", "OGC:CRS84")
    crs = parse_crs(json.dumps(crs_json) if isinstance(crs_json, dict) else crs_json or "OGC:CRS84")
    fld = _pick_field([c for c in table.column_names if c != col], label_field, url)
    geoms = shapely.from_wkb(table.column(col).to_pylist())
    idx, xs, ys = _points_of(list(geoms))
    vals = table.column(fld).to_pylist()
    sel = [vals[i] for i in idx]
    keep = np.array([v is not None for v in sel], dtype=bool)
    return Labels(xs[keep], ys[keep], crs, np.array([str(v) for v in sel], dtype=object)[keep], url)


def _read_raster(url: str, storage_options: Mapping[str, Any] | None, max_samples: int, seed: int) -> Labels:
    import rasterio
    from rasterio.io import MemoryFile

    fs, path = storage.filesystem(url, storage_options)
    with fs.open(path, "rb") as fh:
        data = fh.read()
    with MemoryFile(data) as mem, mem.open() as src:
        band = src.read(1)
        nodata = src.nodata
        transform = src.transform
        crs = parse_crs(src.crs.to_wkt()) if src.crs else None
        tags = src.tags()
    if crs is None:
        raise QueryError(f"label raster {url} has no CRS")
    valid = np.ones(band.shape, dtype=bool)
    if nodata is not None:
        valid &= ~(np.isnan(band) if np.isnan(nodata) else band == nodata)
    rows, cols = np.nonzero(valid)
    values = band[rows, cols]
    rng = np.random.default_rng(seed)
    if rows.size > max_samples:  # stratified: at most max_samples / n_classes per class
        uniq = np.unique(values)
        per = max(1, max_samples // len(uniq))
        pick = np.concatenate([rng.permutation(np.flatnonzero(values == u))[:per] for u in uniq])
        rows, cols, values = rows[pick], cols[pick], values[pick]
    xs, ys = rasterio.transform.xy(transform, rows, cols, offset="center")
    names = {k.upper(): v for k, v in tags.items()}

    def name(v: Any) -> str:
        key = str(int(v)) if float(v).is_integer() else str(v)
        return names.get(f"CLASS_{key}", key)

    labels = np.array([name(v) for v in values], dtype=object)
    return Labels(np.asarray(xs, float), np.asarray(ys, float), crs, labels, url)


@dataclass
class FewShotResult:
    """Fitted classifier, cross-validated accuracy and (optionally) the predicted class map."""

    classes: list[str]
    method: str
    n_samples: int
    counts: dict[str, int]
    cv_accuracy: float | None
    cv_std: float | None
    n_folds: int
    confusion: list[list[int]] | None
    estimator: Any = field(repr=False, default=None)
    class_map: xr.DataArray | None = field(repr=False, default=None)
    out: str | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        acc = (
            f"{self.cv_accuracy:.3f} +- {self.cv_std:.3f} ({self.n_folds}-fold CV grouped by token)"
            if self.cv_accuracy is not None
            else "n/a"
        )
        lines = [
            f"{self.method} on {self.n_samples} labels, {len(self.classes)} classes: "
            + ", ".join(f"{c} ({self.counts[c]})" for c in self.classes),
            f"cross-validated accuracy: {acc}",
        ]
        if self.out:
            lines.append(f"class map: {self.out}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _estimator(method: str, n_min: int, k_neighbors: int, seed: int) -> Any:
    if method == "linear":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    if method == "knn":
        from sklearn.neighbors import KNeighborsClassifier

        return KNeighborsClassifier(
            n_neighbors=max(1, min(k_neighbors, n_min)), metric="cosine", weights="distance"
        )
    raise QueryError(f"unknown method {method!r}; choose 'linear' (logistic-regression probe) or 'knn'")


def _token_groups(X: np.ndarray, tokens: np.ndarray | None) -> np.ndarray:
    """One group id per sample: the token it took its vector from (``tokens [n, 3]``: zone, row,
    col), or, without ``tokens``, its vector itself (labels that share a vector share a group)."""
    keys = np.asarray(tokens, dtype=np.int64) if tokens is not None else np.ascontiguousarray(X)
    _, groups = np.unique(keys.reshape(keys.shape[0], -1), axis=0, return_inverse=True)
    return np.asarray(groups).reshape(-1)


def _centres_in(of: np.ndarray, zone: int, grids: Mapping[int, ZoneGrid]) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the centres of the tokens ``of [m, 3]`` (zone, row, col) in ``zone``'s token grid,
    fractional for tokens of another zone (their centres transformed into ``zone``'s CRS; NaN where
    they do not project)."""
    from pyproj import Transformer

    rows, cols = of[:, 1].astype(np.float64), of[:, 2].astype(np.float64)
    g = grids[zone]
    for other in np.unique(of[:, 0]):
        if int(other) == zone:
            continue
        at = of[:, 0] == other
        h = grids[int(other)]
        x, y = h.token_centres(of[at, 1], of[at, 2])
        sx, sy = Transformer.from_crs(int(other), zone, always_xy=True).transform(x, y)
        sx, sy = np.asarray(sx, np.float64), np.asarray(sy, np.float64)
        ok = np.isfinite(sx) & np.isfinite(sy)
        cols[at] = np.where(ok, (sx - g.x0) / g.token_ground_m - 0.5, np.nan)
        rows[at] = np.where(ok, (g.y1 - sy) / g.token_ground_m - 0.5, np.nan)
    return rows, cols


def _near(
    tokens: np.ndarray, of: np.ndarray, buffer: int, grids: Mapping[int, ZoneGrid] | None = None
) -> np.ndarray:
    """Mask of ``tokens`` within ``buffer`` tokens of any token in ``of`` (both ``[n, 3]``: zone, row,
    col): the two footprints are less than ``buffer`` tokens apart, i.e. in each axis of the token's
    zone grid its centre is less than ``buffer + 1`` tokens from the other token's centre. In one zone
    that is the Chebyshev ring of ``buffer`` tokens; across a zone border (``grids``: each zone's
    token grid) the other token's centre is transformed into the token's zone, so a token just
    across the border is buffered as a neighbour in the same zone is. Without ``grids`` tokens of
    another zone are never near (``fit_fewshot`` refuses several zones then)."""
    near = np.zeros(tokens.shape[0], dtype=bool)
    of = np.unique(np.asarray(of, dtype=np.int64).reshape(-1, 3), axis=0)
    reach = buffer + 1.0
    for zone in np.unique(tokens[:, 0]):
        here = np.flatnonzero(tokens[:, 0] == zone)
        if grids is not None:
            rows, cols = _centres_in(of, int(zone), grids)
        else:
            same = of[:, 0] == zone
            rows, cols = of[same, 1].astype(np.float64), of[same, 2].astype(np.float64)
        tr, tc = tokens[here, 1].astype(np.float64), tokens[here, 2].astype(np.float64)
        for s in range(0, rows.size, 512):  # [here, 512] at a time
            r, c = rows[s : s + 512], cols[s : s + 512]
            hit = (np.abs(tr[:, None] - r[None]) < reach) & (np.abs(tc[:, None] - c[None]) < reach)
            near[here] |= hit.any(axis=1)
    return near


def fit_fewshot(
    X: np.ndarray,
    y: Sequence[str] | np.ndarray,
    *,
    method: Literal["linear", "knn"] = "linear",
    cv: int = 5,
    k_neighbors: int = 5,
    seed: int = 0,
    tokens: np.ndarray | None = None,
    buffer_tokens: int = CV_BUFFER_TOKENS,
    grids: Mapping[int, ZoneGrid] | None = None,
) -> FewShotResult:
    """Fit a probe on vectors ``X [n, dim]`` with labels ``y`` and cross-validate it.

    The CV never scores a label against a copy of its own vector: labels on one token (``tokens
    [n, 3]``: zone, row, col of each label's token; without it, labels with identical vectors) are
    one group, kept in one fold (stratified group k-fold, k = min(``cv``, the fewest tokens of a
    class)), and each fold's training set leaves out the labels within ``buffer_tokens`` tokens of
    its test labels (neighbouring tokens share context), in ground coordinates across UTM zone borders:
    ``grids`` (each zone's token grid, ``Embeddings.grid``) is required when ``tokens`` span several
    zones."""
    from sklearn.metrics import confusion_matrix
    from sklearn.model_selection import StratifiedGroupKFold

    y_arr = np.asarray([str(v) for v in y], dtype=object)
    if tokens is not None and buffer_tokens > 0 and np.unique(np.asarray(tokens)[:, 0]).size > 1:
        missing = sorted({int(z) for z in np.asarray(tokens)[:, 0]} - set(grids or {}))
        if missing:  # the buffer could not reach across the border: a neighbour would leak
            raise ValueError(f"tokens span several zones: pass grids for zones {missing} (Embeddings.grid)")
    classes, counts = np.unique(y_arr, return_counts=True)
    count_map = {str(c): int(n) for c, n in zip(classes, counts)}
    if classes.size < 2:
        only = f"{classes[0]!r} ({counts[0]} labels)" if classes.size else "none"
        raise QueryError(f"labels have a single class {only}; need at least 2 classes to fit a classifier")
    Xn = unit(X)
    groups = _token_groups(Xn, tokens)
    n_min = int(counts.min())
    est = _estimator(method, n_min, k_neighbors, seed)
    notes: list[str] = []
    n_groups = int(np.unique(groups).size)
    if n_groups < y_arr.size:
        notes.append(
            f"{y_arr.size} labels fall on {n_groups} distinct tokens: labels on one token are kept in one "
            "CV fold (they share its vector)"
        )
    group_min = min(int(np.unique(groups[y_arr == c]).size) for c in classes)
    n_folds = min(int(cv), group_min)
    acc = std = None
    conf = None
    if n_folds >= 2:
        skf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        pred = np.empty(y_arr.size, dtype=object)
        fold_acc = []
        for train, test in skf.split(Xn, y_arr, groups):
            if tokens is not None and buffer_tokens > 0:
                tok = np.asarray(tokens, dtype=np.int64)
                train = train[~_near(tok[train], tok[test], buffer_tokens, grids)]
            pred[test] = _fold_predict(method, Xn[train], y_arr[train], Xn[test], k_neighbors, seed)
            fold_acc.append(float(np.mean(pred[test] == y_arr[test])))
        acc, std = float(np.mean(pred == y_arr)), float(np.std(fold_acc))
        conf = confusion_matrix(y_arr, pred, labels=classes).tolist()
    else:
        notes.append(
            f"no cross-validation: the smallest class has labels on {group_min} token(s); every class needs >= 2"
        )
    est.fit(Xn, y_arr)
    return FewShotResult(
        classes=[str(c) for c in classes],
        method=method,
        n_samples=int(y_arr.size),
        counts=count_map,
        cv_accuracy=acc,
        cv_std=std,
        n_folds=n_folds if n_folds >= 2 else 0,
        confusion=conf,
        estimator=est,
        notes=notes,
    )


def _fold_predict(
    method: str, X: np.ndarray, y: np.ndarray, X_test: np.ndarray, k_neighbors: int, seed: int
) -> np.ndarray:
    """Predictions of one CV fold; a fold whose training labels (after the buffer) hold one class
    or none predicts that class or nothing right, as an honest score must."""
    present, counts = np.unique(y, return_counts=True)
    if present.size == 0:
        return np.full(X_test.shape[0], "", dtype=object)
    if present.size == 1:
        return np.full(X_test.shape[0], present[0], dtype=object)
    est = _estimator(method, int(counts.min()), k_neighbors, seed)
    if method == "knn":
        est.set_params(n_neighbors=max(1, min(k_neighbors, int(y.size))))
    est.fit(X, y)
    return np.asarray(est.predict(X_test), dtype=object)


def predict_map(result: FewShotResult, sel: xr.DataArray) -> xr.DataArray:
    """Class index map ``(y, x)`` uint8 (255 = nodata) of a selection ``(y, x, dim)``."""
    vals = np.asarray(sel.values, dtype=np.float32)
    h, w, d = vals.shape
    flat = vals.reshape(-1, d)
    valid = np.isfinite(flat).all(axis=1)
    out = np.full(h * w, NODATA_CLASS, dtype=np.uint8)
    if valid.any():
        pred = result.estimator.predict(unit(flat[valid]))
        index = {c: i for i, c in enumerate(result.classes)}
        out[valid] = np.array([index[str(p)] for p in pred], dtype=np.uint8)
    attrs = {k: v for k, v in sel.attrs.items() if k != "grid_mapping"} | {
        "classes": list(result.classes),
        "nodata": NODATA_CLASS,
    }
    return geo_dataarray(
        out.reshape(h, w), sel["x"].values, sel["y"].values, parse_crs(sel.attrs["crs"]), attrs, ("y", "x")
    )


def _labels_bbox(labels: Labels, pad: float) -> tuple[float, float, float, float]:
    return (
        float(labels.x.min() - pad),
        float(labels.y.min() - pad),
        float(labels.x.max() + pad),
        float(labels.y.max() + pad),
    )


def classify(
    emb: Embeddings,
    labels: Labels | str,
    *,
    bbox: str | Sequence[float] | None = None,
    crs: Any = "EPSG:4326",
    out: str | None = None,
    method: Literal["linear", "knn"] = "linear",
    time: TimeLike = None,
    label_field: str | None = None,
    cv: int = 5,
    target_crs: Any = None,
    seed: int = 0,
    storage_options: Mapping[str, Any] | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> FewShotResult:
    """Fit a few-shot classifier on labelled points and predict a class map over ``bbox``
    (default: the labels' extent plus a little margin, in the labels' CRS). ``out`` (``.tif``)
    receives the map as a COG with a colour table and class names in ``CLASS_<i>`` tags, plus GDAL's
    ``<out>.aux.xml`` with the category names and a raster attribute table (QGIS/GDAL read both).
    The map is predicted in memory: an area above ``max_tokens`` tokens is refused before any
    embedding is read (labels spread far apart make a large default area)."""
    lab = read_labels(labels, label_field, storage_options, seed=seed) if isinstance(labels, str) else labels
    if len(lab) == 0:
        raise QueryError(f"no labelled points in {lab.source or 'the labels'}")
    ti = emb.time_index(time)
    if bbox is None:
        pad = 2 * emb.token_ground_m if lab.crs.is_projected else 2 * emb.token_ground_m / 111_320.0
        lab_box = _labels_bbox(lab, pad)
        bbox, crs, from_labels = lab_box, lab.crs, True
    else:
        from_labels = False
    try:
        check_tokens(*selection_shape(emb, bbox, crs, time=ti, target_crs=target_crs), max_tokens)
    except SelectionTooLargeError as exc:
        if not from_labels:
            raise
        raise SelectionTooLargeError(
            f"the area to map defaults to the labels' extent {tuple(round(v, 6) for v in lab_box)} "
            f"({lab.crs.to_string()}): {exc}"
        ) from None
    except QueryError:  # e.g. no data there: the labels' own error below says more, select() repeats it
        pass
    X, info = vectors_at(emb, lab.x, lab.y, lab.crs, time=ti)
    ok = np.isfinite(X[:, 0])
    notes = []
    if not ok.any():
        w, s, e, n = emb.extent_wgs84(ti)
        raise QueryError(
            f"none of the {len(lab)} labels falls on data; data covers lon {w:.5f}..{e:.5f}, lat {s:.5f}..{n:.5f}"
        )
    if (~ok).any():
        notes.append(f"{int((~ok).sum())} of {len(lab)} labels fall outside the data and were ignored")
    tokens = np.column_stack([info["epsg"], info["row"], info["col"]])[ok]
    grids = {int(z): emb.grid(int(z)) for z in np.unique(tokens[:, 0])}
    res = fit_fewshot(X[ok], lab.labels[ok], method=method, cv=cv, seed=seed, tokens=tokens, grids=grids)
    res.notes = notes + res.notes
    sel = select(emb, bbox, crs, time=ti, target_crs=target_crs, max_tokens=max_tokens)
    res.class_map = predict_map(res, sel)
    if out:
        tags = {f"CLASS_{i}": c for i, c in enumerate(res.classes)} | {
            "method": method,
            "cv_accuracy": "n/a" if res.cv_accuracy is None else f"{res.cv_accuracy:.4f}",
            "version": emb.name,
            "time": emb.times[ti],
        }
        cmap = {i: (*_PALETTE[i % len(_PALETTE)], 255) for i in range(len(res.classes))}
        cmap[NODATA_CLASS] = (0, 0, 0, 0)
        res.out = write_raster(
            out,
            res.class_map.values,
            res.class_map["x"].values,
            res.class_map["y"].values,
            parse_crs(res.class_map.attrs["crs"]),
            nodata=NODATA_CLASS,
            descriptions=["class"],
            tags=tags,
            colormap=cmap,
            category_names=list(res.classes),
            resolution=float(sel.attrs.get("resolution", 1.0)),
            storage_options=storage_options,
        )
    return res

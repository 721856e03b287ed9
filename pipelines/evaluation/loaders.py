"""Ready-made evaluation datasets and the loader for the user's own GeoTIFF + labels.

* ``t29unu``: the real Sentinel-2A L2A SAFE product T29UNU (Ireland, 2022-10-05) from the shared
  real-data folder: 11 bands at 60 m, SCL scene classes as weak labels.
* ``bigearthnet``: the 6 real BigEarthNet-S2 example patches shipped in the ``bigearthnet-common==2.8.0``
  wheel (12 bands at 10/20/60 m, multi-label CORINE classes). Never downloaded here: point at the
  wheel, its ``BigEarthNet-S2-Example.tar.bz2`` or an extracted folder.
* ``synthetic``: a generated scene with exact classes (tests, smoke runs).
* a GeoTIFF path plus a label raster (same CRS and extent) or labelled points (CSV / GeoJSON).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.embed.scaling import raster_scaling
from pipelines.evaluation.datasets import (
    EvalDataError,
    LabelledScene,
    PatchSet,
    make_label_raster,
    overlap_groups,
    scene_patches,
    synthetic_scene,
)
from pipelines.evaluation.heldout import t29unu_window
from pipelines.registry import BandSpec

log = logging.getLogger(__name__)

BIGEARTHNET_WHEEL = "bigearthnet_common-2.8.0-py3-none-any.whl"
BIGEARTHNET_ENV = "AOM_BIGEARTHNET"
BIGEARTHNET_HINT = (
    "download it once with `pip download --no-deps bigearthnet-common==2.8.0 -d ~/.cache/aom` and pass "
    f"--dataset bigearthnet:PATH (the wheel, its BigEarthNet-S2-Example.tar.bz2 or an extracted folder) or set "
    f"${BIGEARTHNET_ENV}"
)

# Sentinel-2 L2A scene classification (SCL) values -> evaluation classes. Clouds of medium and high
# probability merge into one class; no data, saturated, dark-area, unclassified and snow are ignored.
SCL_CLASSES: dict[int, str] = {
    3: "cloud shadow",
    4: "vegetation",
    5: "not vegetated",
    6: "water",
    8: "cloud",
    9: "cloud",
    10: "thin cirrus",
}
SCL_IGNORED = (0, 1, 2, 7, 11)

S2_60M_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12")
S2_BEN_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
_S2_BAND_ID = {
    b: i
    for i, b in enumerate(
        ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
    )
}


@dataclass
class DatasetSpec:
    """How ``load_dataset`` turns a name or path into patches (the CLI's options)."""

    name: str  # "t29unu" | "bigearthnet[:PATH]" | "synthetic" | a GeoTIFF path
    labels: str | None = None  # label raster or points file (GeoTIFF datasets)
    sensor: str | None = None  # registry sensor of a GeoTIFF's bands
    bands: tuple[str, ...] = ()  # band names (registry), one per raster band, in order
    # reflectance = DN * scale + offset; None: pipelines.embed.scaling.raster_scaling decides (as
    # embed-raster: the file's tags, else 1e-4 for integer rasters with a warning, else 1)
    scale: float | None = None
    offset: float | None = None
    ignore: tuple[int, ...] = ()  # label values to ignore (besides the raster's nodata)
    class_names: dict[int, str] = field(default_factory=dict)
    label_column: str = "label"
    real_data: str | None = None  # the shared real-data folder (default: ../shared/data/real)
    window: tuple[int, int, int, int] | None = None  # (row, col, height, width) crop in finest pixels
    registry: tuple[str, ...] = ()


def _registry(paths: Sequence[str] = ()) -> Any:
    from pipelines.registry import load_registry

    return load_registry([Path(p) for p in paths])


def registry_bands(
    sensor: str, names: Sequence[str] | None = None, registry: Sequence[str] = ()
) -> list[BandSpec]:
    """Bands of a registry sensor (all, or ``names`` by band or common name, in that order)."""
    reg = _registry(registry)
    s = reg.sensor(sensor)
    by_name = {b.name: b for b in s.bands}
    by_common: dict[str, Any] = {}
    for b in s.bands:
        by_common.setdefault(b.common_name, b)
    out = []
    for n in names if names else [b.name for b in s.bands]:
        b = by_name.get(n) or by_common.get(n)
        if b is None:
            raise EvalDataError(f"sensor {sensor!r} has no band {n!r}; it has {sorted(by_name)}")
        out.append(b)
    return out


def parse_sensor_target(spec: str, registry: Sequence[str] = ()) -> tuple[str, list[BandSpec]]:
    """``"landsat-oli"`` or ``"hls-s30:B02,B03,B04"`` -> (label, bands)."""
    sensor, _, names = spec.partition(":")
    bands = registry_bands(sensor, [n for n in names.split(",") if n] or None, registry)
    return spec, bands


# ---------------------------------------------------------------------------------------------
# T29UNU


def default_real_dir(explicit: str | None = None) -> Path:
    if explicit:
        p = Path(explicit).expanduser()
    else:
        from pipelines.samples import default_real_data_dir

        found = default_real_data_dir()
        if found is None:
            raise EvalDataError(
                "real sample data not found at ../shared/data/real; set $AOM_REAL_DATA or pass --real-data"
            )
        p = found
    if not p.is_dir():
        raise EvalDataError(f"real-data folder {p} not found")
    return p


def find_t29unu(real_dir: Path) -> Path:
    hits = sorted((real_dir / "sentinel-2-l2a-safe").glob("*T29UNU*.SAFE"))
    if not hits:
        raise EvalDataError(f"no T29UNU SAFE product under {real_dir / 'sentinel-2-l2a-safe'}")
    return hits[0]


def s2_safe_offsets(safe: Path) -> tuple[float, dict[str, float]]:
    """(quantification value, BOA add offset per band name) from MTD_MSIL2A.xml (0 before baseline 04.00)."""
    mtd = safe / "MTD_MSIL2A.xml"
    quant, offsets = 10000.0, {}
    if mtd.is_file():
        root = ET.parse(mtd).getroot()
        for el in root.iter():
            tag = el.tag.rsplit("}", 1)[-1]
            if tag == "BOA_QUANTIFICATION_VALUE" and el.text:
                quant = float(el.text)
            elif tag == "BOA_ADD_OFFSET" and el.text:
                offsets[int(el.attrib.get("band_id", "-1"))] = float(el.text)
    by_name = {b: offsets.get(i, 0.0) for b, i in _S2_BAND_ID.items()}
    return quant, by_name


def load_t29unu(
    real_dir: str | Path | None = None, window: tuple[int, int, int, int] | None = None
) -> LabelledScene:
    """The T29UNU L2A product at 60 m: reflectance = (DN + BOA_ADD_OFFSET) / 10000 (offset -1000 from
    baseline 04.00, read from MTD_MSIL2A.xml), DN 0 = no data; labels = SCL classes (``SCL_CLASSES``)."""
    import rasterio
    from rasterio.windows import Window

    root = default_real_dir(None if real_dir is None else str(real_dir))
    safe = find_t29unu(root)
    img = sorted(safe.glob("GRANULE/*/IMG_DATA/R60m"))
    if not img:
        raise EvalDataError(f"{safe}: no GRANULE/*/IMG_DATA/R60m folder")
    quant, offsets = s2_safe_offsets(safe)
    bands = registry_bands("sentinel-2-msi", S2_60M_BANDS)
    win = None if window is None else Window(window[1], window[0], window[3], window[2])
    arrays = []
    for b in bands:
        files = sorted(img[0].glob(f"*_{b.name}_60m.jp2"))
        if not files:
            raise EvalDataError(f"{img[0]}: band {b.name} at 60 m missing")
        with rasterio.open(files[0]) as src:
            dn = src.read(1, window=win).astype(np.float32)
            transform, crs = src.window_transform(win) if win is not None else src.transform, src.crs
        refl = (dn + offsets.get(b.name, 0.0)) / quant
        refl[dn == 0] = np.nan
        arrays.append(refl.astype(np.float32))
    scl_files = sorted(img[0].glob("*_SCL_60m.jp2"))
    if not scl_files:
        raise EvalDataError(f"{img[0]}: SCL_60m missing")
    with rasterio.open(scl_files[0]) as src:
        scl = src.read(1, window=win)
    labels, names = make_label_raster(scl, SCL_CLASSES, SCL_IGNORED)
    bands = [replace(b, gsd_m=60.0) for b in bands]
    return LabelledScene(
        name="t29unu",
        bands=tuple(bands),
        arrays=arrays,
        labels=labels,
        class_names=names,
        meta={
            "source": str(safe.name),
            "crs": str(crs),
            "transform": list(transform)[:6],
            "label_kind": "weak: Sentinel-2 L2A scene classification (SCL, algorithmic), "
            + ", ".join(f"{k}={v}" for k, v in SCL_CLASSES.items()),
            "reflectance": f"(DN + BOA_ADD_OFFSET) / {quant:g}, offsets {sorted(set(offsets.values()))}",
        },
    )


# ---------------------------------------------------------------------------------------------
# BigEarthNet


def _ben_default_candidates() -> list[Path]:
    out = []
    env = os.environ.get(BIGEARTHNET_ENV)
    if env:
        out.append(Path(env).expanduser())
    for base in (Path.home() / ".cache" / "aom", Path.cwd() / ".aom", Path.cwd()):
        out.append(base / BIGEARTHNET_WHEEL)
        out.append(base / "BigEarthNet-S2-Example")
    return out


def _ben_files(path: Path) -> dict[str, dict[str, bytes]]:
    """Patch name -> {file name -> bytes} from a wheel, the example tarball or a folder."""
    files: dict[str, dict[str, bytes]] = {}

    def add(name: str, data: bytes) -> None:
        parts = name.replace("\\", "/").split("/")
        if len(parts) >= 2 and (parts[-1].endswith(".tif") or parts[-1].endswith("_labels_metadata.json")):
            files.setdefault(parts[-2], {})[parts[-1]] = data

    def from_tar(data: bytes) -> None:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
            for m in tf.getmembers():
                if m.isfile():
                    fh = tf.extractfile(m)
                    if fh is not None:
                        add(m.name, fh.read())

    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and p.name.endswith(".tar.bz2") and "S2" in p.name:
                from_tar(p.read_bytes())
            elif p.is_file() and p.name.endswith(".whl"):
                files.update(_ben_files(p))
            elif p.is_file():
                add(str(p.relative_to(path)), p.read_bytes()) if p.suffix in (".tif", ".json") else None
    elif path.suffix == ".whl" or zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("BigEarthNet-S2-Example.tar.bz2")]
            if not names:
                raise EvalDataError(f"{path}: no BigEarthNet-S2-Example.tar.bz2 inside")
            from_tar(z.read(names[0]))
    elif path.is_file():
        from_tar(path.read_bytes())
    else:
        raise EvalDataError(f"BigEarthNet data not found at {path}; {BIGEARTHNET_HINT}")
    return files


def find_bigearthnet(path: str | None = None) -> Path:
    cands = [Path(path).expanduser()] if path else _ben_default_candidates()
    for c in cands:
        if c.exists():
            return c
    raise EvalDataError(
        f"BigEarthNet example patches not found (looked at {[str(c) for c in cands]}); {BIGEARTHNET_HINT}"
    )


def load_bigearthnet(path: str | None = None) -> PatchSet:
    """The BigEarthNet-S2 example patches: one sample per patch (1.2 km; 10 m bands 120 px, 20 m 60 px,
    60 m 20 px), reflectance = DN / 10000, multi-label CORINE classes; each patch is its own group."""
    import rasterio

    src = find_bigearthnet(path)
    files = _ben_files(src)
    if not files:
        raise EvalDataError(f"{src}: no BigEarthNet patch found; {BIGEARTHNET_HINT}")
    meta_bands = {b.name: b for b in registry_bands("sentinel-2-msi", S2_BEN_BANDS)}
    names = sorted(files)
    pixels: dict[str, list[np.ndarray]] = {b: [] for b in S2_BEN_BANDS}
    labels: list[list[str]] = []
    for patch in names:
        f = files[patch]
        meta_name = f"{patch}_labels_metadata.json"
        if meta_name not in f:
            raise EvalDataError(f"{src}: patch {patch} has no labels metadata")
        labels.append(list(json.loads(f[meta_name])["labels"]))
        for b in S2_BEN_BANDS:
            tif = f.get(f"{patch}_{b}.tif")
            if tif is None:
                raise EvalDataError(f"{src}: patch {patch} has no band {b}")
            with rasterio.MemoryFile(tif) as mf, mf.open() as ds:
                dn = ds.read(1).astype(np.float32)
            a = dn / 10000.0
            a[dn == 0] = np.nan
            pixels[b].append(a)
    classes = sorted({c for ls in labels for c in ls})
    y = np.zeros((len(names), len(classes)), dtype=bool)
    for i, ls in enumerate(labels):
        for c in ls:
            y[i, classes.index(c)] = True
    bands = []
    arrays = []
    for b in S2_BEN_BANDS:
        stack = np.stack(pixels[b])
        bands.append(replace(meta_bands[b], gsd_m=1200.0 / stack.shape[1]))
        arrays.append(stack)
    return PatchSet(
        name="bigearthnet",
        bands=tuple(bands),
        pixels=arrays,
        labels=y,
        class_names=tuple(classes),
        groups=np.arange(len(names), dtype=np.int64),
        multilabel=True,
        meta={
            "source": str(src),
            "patches": names,
            "label_kind": "BigEarthNet CORINE land-cover multi-labels (43-class nomenclature)",
            "reflectance": "DN / 10000",
            "patch_m": 1200.0,
        },
    )


# ---------------------------------------------------------------------------------------------
# user GeoTIFF + labels


def _bounds_close(a: Sequence[float], b: Sequence[float], tol: float) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


@dataclass
class _Image:
    bands: list[BandSpec]
    arrays: list[np.ndarray]
    transform: Any
    crs: Any
    bounds: tuple[float, float, float, float]
    meta: dict[str, Any]


def _read_image(spec: DatasetSpec) -> _Image:
    """A multi-band GeoTIFF (one GSD) -> reflectance arrays and registry band metadata."""
    import rasterio

    path = Path(spec.name).expanduser()
    if not path.is_file():  # first: a misspelt name is not a GeoTIFF missing its --sensor
        raise EvalDataError(
            f"dataset {spec.name!r} is neither a known name (t29unu[:north|south], bigearthnet[:PATH], "
            "synthetic[:K]) nor an existing file"
        )
    if not spec.sensor:
        raise EvalDataError(
            "a GeoTIFF dataset needs --sensor (a registry sensor name) to know its band wavelengths"
        )
    with rasterio.open(path) as ds:
        data = ds.read().astype(np.float32)
        nodata = ds.nodata
        scaling = raster_scaling(
            ds.count,
            ds.dtypes[0],
            tuple(ds.scales or ()),
            tuple(ds.offsets or ()),
            spec.scale,
            spec.offset,
            str(path),
        )
        transform, crs, bounds = ds.transform, ds.crs, tuple(ds.bounds)
    if not math.isclose(abs(transform.a), abs(transform.e), rel_tol=1e-6):
        raise EvalDataError(f"{path}: non-square pixels ({transform.a} x {transform.e}) are not supported")
    gsd = float(abs(transform.a))
    names = list(spec.bands)
    if names and len(names) != data.shape[0]:
        raise EvalDataError(f"{path} has {data.shape[0]} bands but --bands names {len(names)}")
    bands = registry_bands(spec.sensor, names or None, spec.registry)
    if len(bands) != data.shape[0]:
        raise EvalDataError(
            f"{path} has {data.shape[0]} bands and sensor {spec.sensor!r} has {len(bands)}: name them with --bands"
        )
    invalid = ~np.isfinite(data)
    if nodata is not None:
        invalid |= data == nodata
    refl = scaling.apply(data)
    refl[invalid] = np.nan
    return _Image(
        bands=[replace(b, gsd_m=gsd) for b in bands],
        arrays=[a.astype(np.float32) for a in refl],
        transform=transform,
        crs=crs,
        bounds=(float(bounds[0]), float(bounds[1]), float(bounds[2]), float(bounds[3])),
        meta={
            "source": str(path),
            "crs": str(crs),
            "reflectance": scaling.describe(),
            "scaling": scaling.to_dict(),
        },
    )


def load_geotiff_scene(spec: DatasetSpec) -> LabelledScene:
    """A multi-band GeoTIFF (one GSD) + a label raster on the same CRS and extent.

    Band metadata come from the registry (``--sensor`` + ``--bands``; default every band of the sensor
    when the counts match). DN -> reflectance by ``raster_scaling`` (as embed-raster); the nodata
    value (and non-finite values) become NaN. The label raster's nodata and ``ignore`` values are
    ignored; ``class_names`` (value -> name) selects and names classes (default: every other value)."""
    import rasterio

    img = _read_image(spec)
    if not spec.labels:
        raise EvalDataError("a GeoTIFF dataset needs --labels (a label raster, or points as CSV / GeoJSON)")
    lab_path = Path(spec.labels).expanduser()
    with rasterio.open(lab_path) as ls:
        raw = ls.read(1)
        lab_nodata = ls.nodata
        if ls.crs != img.crs:
            raise EvalDataError(
                f"label grid mismatch: {lab_path} is in {ls.crs} but {spec.name} is in {img.crs}; "
                "reproject the labels onto the image grid"
            )
        tol = 0.5 * max(img.bands[0].gsd_m, abs(ls.transform.a))
        if not _bounds_close(tuple(ls.bounds), img.bounds, tol):
            raise EvalDataError(
                f"label grid mismatch: {lab_path} covers {tuple(round(v, 2) for v in ls.bounds)} but "
                f"{spec.name} covers {tuple(round(v, 2) for v in img.bounds)}; the label raster must cover the "
                "image extent (crop / resample it onto the image grid, e.g. gdalwarp -te ... -tr ...)"
            )
    ignore = list(spec.ignore)
    if lab_nodata is not None and math.isfinite(lab_nodata):
        ignore.append(int(lab_nodata))
    labels, cnames = make_label_raster(raw, dict(spec.class_names) or None, ignore)
    return LabelledScene(
        name=Path(spec.name).stem,
        bands=tuple(img.bands),
        arrays=img.arrays,
        labels=labels,
        class_names=cnames,
        meta={**img.meta, "labels": str(lab_path)},
    )


def _read_points(path: Path, label_column: str) -> tuple[list[tuple[float, float]], list[str], str | None]:
    """-> (x/y pairs, labels, CRS of the coordinates or None = the raster's)."""
    pts: list[tuple[float, float]] = []
    labs: list[str] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            cols = list(reader.fieldnames or [])
            xk = next((c for c in ("x", "lon", "longitude", "easting") if c in cols), None)
            yk = next((c for c in ("y", "lat", "latitude", "northing") if c in cols), None)
            if xk is None or yk is None or label_column not in cols:
                raise EvalDataError(
                    f"{path}: a points CSV needs columns x, y (or lon, lat) and {label_column!r}; it has {cols}"
                )
            for row in reader:
                pts.append((float(row[xk]), float(row[yk])))
                labs.append(str(row[label_column]))
        return pts, labs, ("EPSG:4326" if xk in ("lon", "longitude") else None)
    gj = json.loads(path.read_text())
    name = ((gj.get("crs") or {}).get("properties") or {}).get("name")
    crs = str(name) if name else "EPSG:4326"
    for feat in gj.get("features", []):
        geom = feat.get("geometry") or {}
        if geom.get("type") != "Point":
            continue
        props = feat.get("properties") or {}
        if label_column not in props:
            raise EvalDataError(f"{path}: a point has no {label_column!r} property")
        x, y = geom["coordinates"][:2]
        pts.append((float(x), float(y)))
        labs.append(str(props[label_column]))
    return pts, labs, crs


def load_point_patches(spec: DatasetSpec, patch_px: int = 16, block_patches: int = 4) -> PatchSet:
    """A GeoTIFF plus labelled points: one patch of ``patch_px`` centred on every point inside the
    image (CSV x/y in the raster CRS or lon/lat; GeoJSON in its CRS, default EPSG:4326); points whose
    patch leaves the image are dropped and counted; groups = blocks of ``block_patches`` patches,
    merged where patches of two blocks overlap (``overlap_groups``: no pixel in train and test)."""
    from rasterio.crs import CRS
    from rasterio.warp import transform as warp_transform

    if not spec.labels:
        raise EvalDataError("labelled points need --labels POINTS.csv|.geojson")
    img = _read_image(spec)
    pts, labs, pcrs = _read_points(Path(spec.labels).expanduser(), spec.label_column)
    if not pts:
        raise EvalDataError(f"{spec.labels}: no labelled point")
    if pcrs is not None and img.crs is not None and CRS.from_user_input(pcrs) != img.crs:
        xs, ys = warp_transform(pcrs, img.crs, [p[0] for p in pts], [p[1] for p in pts])
        pts = list(zip(xs, ys))
    h, w = img.arrays[0].shape
    half = patch_px // 2
    inv = ~img.transform
    rows, cols, keep = [], [], []
    for (x, y), lab in zip(pts, labs):
        col, row = inv @ (x, y)
        r0, c0 = math.floor(row) - half, math.floor(col) - half
        if r0 < 0 or c0 < 0 or r0 + patch_px > h or c0 + patch_px > w:
            continue
        rows.append(r0)
        cols.append(c0)
        keep.append(lab)
    if not keep:
        raise EvalDataError(
            f"{spec.labels}: none of {len(pts)} points has a full {patch_px}-px patch inside {spec.name}"
        )
    classes = sorted(set(keep))
    pixels = [
        np.stack([a[r : r + patch_px, c : c + patch_px] for r, c in zip(rows, cols)]) for a in img.arrays
    ]
    block = patch_px * max(1, block_patches)
    key = (np.asarray(rows) // block) * (w // block + 1) + np.asarray(cols) // block
    groups = overlap_groups(np.unique(key, return_inverse=True)[1], rows, cols, patch_px)
    return PatchSet(
        name=Path(spec.name).stem,
        bands=tuple(img.bands),
        pixels=[p.astype(np.float32) for p in pixels],
        labels=np.asarray([classes.index(v) for v in keep], dtype=np.int64),
        class_names=tuple(classes),
        groups=groups.astype(np.int64),
        meta={
            **img.meta,
            "points": str(spec.labels),
            "points_outside": len(pts) - len(keep),
            "patch_px": patch_px,
        },
    )


# ---------------------------------------------------------------------------------------------
# one entry point


def load_dataset(
    spec: DatasetSpec,
    patch_px: int | None = None,  # None: 16, or more for whole pixels of every band (default_patch_px)
    min_purity: float = 0.6,
    min_labelled: float = 0.5,
    min_valid: float = 0.5,
    block_patches: int = 4,
    seed: int = 0,
) -> PatchSet:
    """Name or path -> labelled patches (see the module docstring)."""
    name = spec.name
    low = name.lower()
    kw: Mapping[str, Any] = {
        "patch_px": patch_px,
        "min_purity": min_purity,
        "min_labelled": min_labelled,
        "min_valid": min_valid,
        "block_patches": block_patches,
    }
    if low in ("t29unu", "t29unu:north", "t29unu:south"):
        window = t29unu_window(low, spec.window)
        ps = scene_patches(load_t29unu(spec.real_data, window), **kw)
        ps.name = low if spec.window is None else f"{low} window {window}"
        return ps
    if low == "bigearthnet" or low.startswith("bigearthnet:"):
        return load_bigearthnet(name.split(":", 1)[1] if ":" in name else None)
    m = re.fullmatch(r"synthetic(?::(\d+))?", low)
    if m:
        return scene_patches(synthetic_scene(n_classes=int(m.group(1) or 4), seed=seed), **kw)
    if spec.labels and Path(spec.labels).suffix.lower() in (".csv", ".json", ".geojson"):
        return load_point_patches(spec, patch_px=patch_px or 16, block_patches=block_patches)
    return scene_patches(load_geotiff_scene(spec), **kw)

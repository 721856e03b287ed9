"""The AOM embeddings store: a Zarr v3 hierarchy of per-UTM-zone token grids (format 1).

Layout (see ``docs/embeddings.md`` for the full description)::

    <root>/                              Zarr v3 group, attrs {"aom_embeddings_format": 1}
      <version>/                         one model/checkpoint; attrs = the EmbeddingsVersion definition
        <epsg>/                          one UTM zone, fixed zone-wide grid at token_ground_m
          embeddings (time, y, x, dim)   int8 (int8-sqrt) or float16; chunk = shard = one tile
          pooled     (time, tile_y, tile_x, dim) float16; one chunk per tile
          x, y, tile_x, tile_y, time, spatial_ref   coordinates + CF grid mapping
      _tiles/<version>/t<time_index>/<tile_id>.json   completion records (written after the data)
      stac/collection.json, stac/items/<version>/<tile_id>.json

Every (tile, time) is exactly one shard of ``embeddings`` and one chunk of ``pooled``, so any number
of writers can work on distinct tiles concurrently without ever touching the same object. A tile
counts as done only once its completion record exists; readers list those records, never the data.

Quantisation ``int8-sqrt``: each token vector is L2-normalised, then every component ``u`` of the
unit vector is stored as ``q = round(127 * sign(u) * sqrt(|u|))`` in ``[-127, 127]``; ``-128`` marks
nodata. The inverse is ``v = sign(q) * (q / 127) ** 2``. The per-component error against the unit
vector is at most ``(sqrt(|u|) + sqrt(|v|)) / 254 <= QUANT_MAX_ABS_ERROR = 1/127`` (0.00787).
The vector norm is not kept: the store holds directions (cosine similarity, probes and PCA all work
on directions; AlphaEarth-style embeddings are unit vectors by construction).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pipelines import storage

if TYPE_CHECKING:  # the tiling module is only needed for its Tile shape (duck-typed at runtime)
    import zarr

    from pipelines.tiling import Tile

FORMAT_VERSION = 1
FORMAT_ATTR = "aom_embeddings_format"
TILES_DIR = "_tiles"
STAC_DIR = "stac"

# Zone-wide grid extent before snapping outwards to whole tiles (metres, UTM north and south alike:
# southern zones carry the 10 000 km false northing, so their northings also lie in 0..10 000 km).
ZONE_X_RANGE = (100_000.0, 900_000.0)
ZONE_Y_RANGE = (0.0, 10_000_000.0)

QMAX = 127
NODATA_Q = -128
# |u - v| = |s - s'| (s + s') with s = sqrt|u|, s' = |q|/127, |s - s'| <= 1/254 and s, s' <= 1:
QUANT_MAX_ABS_ERROR = 1.0 / QMAX  # 0.007874: per-component bound against the unit vector

Quantisation = Literal["int8-sqrt", "float16"]
_QUANTISATIONS = ("int8-sqrt", "float16")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
EMB_EXTENSION = "https://stac-extensions.github.io/embeddings/v1.0.0/schema.json"
PROJ_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"


class EmbeddingsStoreError(ValueError):
    """Invalid use of the store: the message names the valid range or choices."""


# ------------------------------------------------------------------------------------------
# Version definition


@dataclass(frozen=True)
class EmbeddingsVersion:
    """One dataset version = one model checkpoint and its token grid.

    ``name`` is the group name under the root, e.g. ``aom-tiny-3f2a9c1b0d4e`` (see :func:`version_name`).
    ``times`` are ISO 8601 dates/datetimes (naive = UTC), one per time slice of the product.
    """

    name: str
    model: str
    model_version: str
    checkpoint_sha256: str
    dim: int
    token_ground_m: float
    tile_size_m: float
    times: tuple[str, ...]
    quantisation: Quantisation = "int8-sqrt"
    config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name) or self.name in (TILES_DIR, STAC_DIR):
            raise EmbeddingsStoreError(
                f"invalid version name {self.name!r}: use 1-128 characters from [A-Za-z0-9._-], "
                f"not starting with '.', '_' or '-' (reserved: {TILES_DIR!r}, {STAC_DIR!r})"
            )
        if self.quantisation not in _QUANTISATIONS:
            raise EmbeddingsStoreError(
                f"unknown quantisation {self.quantisation!r}; choose one of {', '.join(_QUANTISATIONS)}"
            )
        if int(self.dim) != self.dim or self.dim < 1:
            raise EmbeddingsStoreError(f"dim must be a positive integer, got {self.dim!r}")
        if not (self.token_ground_m > 0 and self.tile_size_m > 0):
            raise EmbeddingsStoreError("token_ground_m and tile_size_m must be positive")
        per_tile = self.tile_size_m / self.token_ground_m
        if abs(per_tile - round(per_tile)) > 1e-9:
            raise EmbeddingsStoreError(
                f"tile_size_m ({self.tile_size_m}) must be a whole multiple of token_ground_m "
                f"({self.token_ground_m}); got {per_tile:.4f} tokens per tile side"
            )
        times = tuple(str(t) for t in self.times)
        if not times:
            raise EmbeddingsStoreError("times must list at least one ISO date/datetime")
        for t in times:
            parse_time(t)
        if len(set(times)) != len(times):
            raise EmbeddingsStoreError(f"times must be unique, got {list(times)}")
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "dim", int(self.dim))
        object.__setattr__(self, "token_ground_m", float(self.token_ground_m))
        object.__setattr__(self, "tile_size_m", float(self.tile_size_m))
        try:  # config goes into Zarr attrs: strict JSON only (NaN/Infinity are not JSON)
            object.__setattr__(self, "config", json.loads(storage.json_dumps(dict(self.config))))
        except (TypeError, ValueError) as exc:
            raise EmbeddingsStoreError(f"config must be strict JSON (no NaN/Infinity): {exc}") from None

    @property
    def tokens_per_tile(self) -> int:
        return round(self.tile_size_m / self.token_ground_m)

    @property
    def dtype(self) -> str:
        return "int8" if self.quantisation == "int8-sqrt" else "float16"

    def definition(self) -> dict[str, Any]:
        """The attrs stored on the version group (without the ``created`` timestamp)."""
        d = asdict(self)
        d["times"] = list(self.times)
        d["config"] = dict(self.config)
        return d

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> EmbeddingsVersion:
        keys = ("name", "model", "model_version", "checkpoint_sha256", "dim", "token_ground_m", "tile_size_m")
        missing = [k for k in (*keys, "times") if k not in attrs]
        if missing:
            raise EmbeddingsStoreError(f"version attrs lack {missing}: not an AOM embeddings version group")
        return cls(
            **{k: attrs[k] for k in keys},
            times=tuple(attrs["times"]),
            quantisation=attrs.get("quantisation", "int8-sqrt"),
            config=attrs.get("config", {}),
        )


def version_name(model: str, checkpoint_sha256: str, n: int = 12) -> str:
    """Conventional version name: ``<model>-<first n hex digits of the checkpoint hash>``."""
    digest = checkpoint_sha256.split(":", 1)[-1].lower()
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', model)}-{digest[:n]}"


def parse_time(text: str) -> datetime:
    """ISO date/datetime -> aware UTC datetime (naive input is UTC)."""
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise EmbeddingsStoreError(f"time {text!r} is not an ISO 8601 date/datetime") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


# ------------------------------------------------------------------------------------------
# Quantisation


def _lut() -> np.ndarray:
    """256-entry decode table indexed by the uint8 view of a quantised int8 value."""
    q = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float32)
    v = np.sign(q) * (q / QMAX) ** 2
    v[q == NODATA_Q] = np.nan
    return v.astype(np.float32)


DECODE_LUT = _lut()


def quantize(x: np.ndarray) -> np.ndarray:
    """float vectors ``[..., dim]`` -> int8 ``int8-sqrt`` codes (see module docstring).

    A vector with any non-finite component is nodata (all components -128). A zero vector stays 0.
    """
    x = np.asarray(x, dtype=np.float32)
    bad = ~np.isfinite(x).all(axis=-1, keepdims=True)
    xs = np.where(bad, 0.0, x)
    norm = np.linalg.norm(xs, axis=-1, keepdims=True)
    u = xs / np.where(norm > 0, norm, 1.0)
    q = np.clip(np.rint(QMAX * np.sign(u) * np.sqrt(np.abs(u))), -QMAX, QMAX).astype(np.int8)
    return np.where(bad, np.int8(NODATA_Q), q)


def dequantize(q: np.ndarray) -> np.ndarray:
    """int8 codes -> float32 (``v = sign(q) * (q/127)**2``, -128 -> NaN); float16 input -> float32."""
    q = np.asarray(q)
    if q.dtype == np.int8:
        return DECODE_LUT[q.view(np.uint8)]
    return q.astype(np.float32)


def encode(x: np.ndarray, quantisation: str) -> np.ndarray:
    """Store encoding for a version's quantisation (``float16`` keeps raw values, NaN = nodata)."""
    if quantisation == "int8-sqrt":
        return quantize(x)
    x = np.asarray(x, dtype=np.float32)
    bad = ~np.isfinite(x).all(axis=-1, keepdims=True)
    return np.where(bad, np.nan, x).astype(np.float16)


def unit(x: np.ndarray) -> np.ndarray:
    """L2-normalise along the last axis (zero vectors stay zero, NaN stays NaN)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def quantisation_error(x: np.ndarray, quantisation: str = "int8-sqrt") -> dict[str, float | int | None]:
    """Round-trip error stats of ``x`` ``[..., dim]`` (valid vectors only; None when there are none).

    For ``int8-sqrt`` the reference is the unit vector (the store keeps directions).
    """
    flat = np.asarray(x, dtype=np.float32).reshape(-1, np.shape(x)[-1])
    valid = np.isfinite(flat).all(axis=1)
    ref = flat[valid]
    out: dict[str, float | int | None] = {"valid_vectors": int(valid.sum())}
    if ref.size == 0:
        return {
            **out,
            "max_abs_error": None,
            "mean_abs_error": None,
            "min_cosine": None,
            "norm_min": None,
            "norm_max": None,
        }
    norms = np.linalg.norm(ref, axis=1)
    if quantisation == "int8-sqrt":
        ref = unit(ref)
    back = dequantize(encode(ref, quantisation))
    err = np.abs(back - ref)
    cos = np.sum(unit(back) * unit(ref), axis=1)
    return {
        **out,
        "max_abs_error": float(err.max()),
        "mean_abs_error": float(err.mean()),
        "min_cosine": float(cos.min()),
        "norm_min": float(norms.min()),
        "norm_max": float(norms.max()),
    }


# ------------------------------------------------------------------------------------------
# Zone grid geometry


@dataclass(frozen=True)
class ZoneGrid:
    """The fixed token grid of one UTM zone for one version (north-up: row 0 is the northern edge)."""

    epsg: int
    token_ground_m: float
    tile_size_m: float

    @property
    def x0(self) -> float:
        return math.floor(ZONE_X_RANGE[0] / self.tile_size_m) * self.tile_size_m

    @property
    def x1(self) -> float:
        return math.ceil(ZONE_X_RANGE[1] / self.tile_size_m) * self.tile_size_m

    @property
    def y0(self) -> float:
        return math.floor(ZONE_Y_RANGE[0] / self.tile_size_m) * self.tile_size_m

    @property
    def y1(self) -> float:
        return math.ceil(ZONE_Y_RANGE[1] / self.tile_size_m) * self.tile_size_m

    @property
    def tokens_per_tile(self) -> int:
        return round(self.tile_size_m / self.token_ground_m)

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) tokens."""
        r = self.token_ground_m
        return round((self.y1 - self.y0) / r), round((self.x1 - self.x0) / r)

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(ny, nx) tiles."""
        s = self.tile_size_m
        return round((self.y1 - self.y0) / s), round((self.x1 - self.x0) / s)

    @property
    def geotransform(self) -> tuple[float, float, float, float, float, float]:
        """GDAL order: (x0, dx, 0, ytop, 0, -dy)."""
        return (self.x0, self.token_ground_m, 0.0, self.y1, 0.0, -self.token_ground_m)

    def x_coords(self) -> np.ndarray:
        return self.x0 + (np.arange(self.shape[1], dtype=np.float64) + 0.5) * self.token_ground_m

    def y_coords(self) -> np.ndarray:
        return self.y1 - (np.arange(self.shape[0], dtype=np.float64) + 0.5) * self.token_ground_m

    def tile_window(self, bounds: Sequence[float]) -> tuple[int, int, int, int]:
        """(row0, row1, col0, col1) token window of tile ``bounds``; raises if not on the tile grid."""
        minx, miny, maxx, maxy = (float(b) for b in bounds)
        s, r = self.tile_size_m, self.token_ground_m
        if not (math.isclose(maxx - minx, s) and math.isclose(maxy - miny, s)):
            raise EmbeddingsStoreError(
                f"tile bounds {tuple(bounds)} are {maxx - minx:g} x {maxy - miny:g} m; this version's "
                f"tiles are {s:g} m (tile_size_m)"
            )
        for v in (minx, maxy):
            if abs(v / s - round(v / s)) > 1e-6:
                raise EmbeddingsStoreError(f"tile bounds {tuple(bounds)} are not on the {s:g} m tile grid")
        if minx < self.x0 - 1e-6 or maxx > self.x1 + 1e-6 or miny < self.y0 - 1e-6 or maxy > self.y1 + 1e-6:
            raise EmbeddingsStoreError(
                f"tile bounds {tuple(bounds)} fall outside the zone grid x {self.x0:g}..{self.x1:g}, "
                f"y {self.y0:g}..{self.y1:g} m (EPSG:{self.epsg})"
            )
        row0 = round((self.y1 - maxy) / r)
        col0 = round((minx - self.x0) / r)
        n = self.tokens_per_tile
        return row0, row0 + n, col0, col0 + n

    def tile_index(self, bounds: Sequence[float]) -> tuple[int, int]:
        """(tile_row, tile_col) of a tile in the ``pooled`` array."""
        row0, _, col0, _ = self.tile_window(bounds)
        n = self.tokens_per_tile
        return row0 // n, col0 // n


def check_epsg(epsg: int) -> int:
    epsg = int(epsg)
    if not (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        raise EmbeddingsStoreError(
            f"EPSG:{epsg} is not a WGS 84 / UTM zone; valid codes are 32601-32660 (north) and 32701-32760 (south)"
        )
    return epsg


@lru_cache(maxsize=128)
def crs_wkt(epsg: int) -> str:
    import pyproj

    return str(pyproj.CRS.from_epsg(epsg).to_wkt())


# ------------------------------------------------------------------------------------------
# Zarr plumbing


def zarr_store(
    root_url: str, storage_options: Mapping[str, Any] | None = None, read_only: bool = False
) -> Any:
    """A zarr v3 store on ``root_url`` (local path or any fsspec URL)."""
    from zarr.storage import FsspecStore, LocalStore

    url = storage.normalise_url(root_url)
    if storage.is_local(url):
        path = url[len("file://") :] if url.startswith("file://") else url
        return LocalStore(path, read_only=read_only)
    opts = dict(storage_options or {})
    if url.startswith("s3://"):
        opts = storage.s3_options(opts)
    return FsspecStore.from_url(url, storage_options=opts, read_only=read_only)


def _open_group(root_url: str, path: str, storage_options: Mapping[str, Any] | None, mode: str) -> zarr.Group:
    import zarr

    store = zarr_store(root_url, storage_options, read_only=(mode == "r"))
    return zarr.open_group(store=store, path=path, mode=mode, zarr_format=3)  # type: ignore[arg-type]


def _quiet_members(group: zarr.Group) -> list[str]:
    """Child group names (the ``_tiles``/``stac`` folders are not Zarr nodes: their warnings are noise)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sorted(group.group_keys())


def list_versions(root_url: str, storage_options: Mapping[str, Any] | None = None) -> list[EmbeddingsVersion]:
    """Every version under the root, sorted by name. Raises if the root is not an embeddings store."""
    root = open_root(root_url, storage_options)
    out = []
    for name in _quiet_members(root):
        attrs = dict(root[name].attrs)
        if "checkpoint_sha256" in attrs:
            out.append(EmbeddingsVersion.from_attrs(attrs))
    return out


def open_root(root_url: str, storage_options: Mapping[str, Any] | None = None) -> zarr.Group:
    import zarr

    try:
        root = _open_group(root_url, "", storage_options, "r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise EmbeddingsStoreError(
            f"no embeddings store at {storage.redact_url(root_url)} (no Zarr group there)"
        ) from None
    if root.attrs.get(FORMAT_ATTR) != FORMAT_VERSION:
        raise EmbeddingsStoreError(
            f"{storage.redact_url(root_url)} is a Zarr group but not an AOM embeddings store "
            f"(attrs lack {FORMAT_ATTR}={FORMAT_VERSION})"
        )
    return root


def read_version(
    root_url: str, version_name: str, storage_options: Mapping[str, Any] | None = None
) -> EmbeddingsVersion:
    """The definition of one version; an unknown name raises listing the known ones."""
    root = open_root(root_url, storage_options)
    names = _quiet_members(root)
    if version_name not in names:
        known = [v.name for v in list_versions(root_url, storage_options)]
        raise EmbeddingsStoreError(
            f"unknown embeddings version {version_name!r} in {storage.redact_url(root_url)}; "
            f"available: {', '.join(known) if known else '(none)'}"
        )
    return EmbeddingsVersion.from_attrs(dict(root[version_name].attrs))


def version_zones(
    root_url: str, version_name: str, storage_options: Mapping[str, Any] | None = None
) -> list[int]:
    """EPSG codes of the zone groups of a version."""
    grp = _open_group(root_url, version_name, storage_options, "r")
    return sorted(int(k) for k in _quiet_members(grp) if k.isdigit())


def create_version(
    root_url: str, version: EmbeddingsVersion, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Create the root (if needed) and the version group. Idempotent for the same definition.

    A different definition under an existing name is refused: pick a new name (a new checkpoint
    must be a new version, so nobody mixes vectors from two models).
    """
    import zarr

    store = zarr_store(root_url, storage_options)
    try:
        root = zarr.open_group(store=store, mode="r+", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        root = zarr.open_group(store=store, mode="a", zarr_format=3, attributes={FORMAT_ATTR: FORMAT_VERSION})
    if root.attrs.get(FORMAT_ATTR) != FORMAT_VERSION:
        if any(True for _ in _quiet_members(root)) or dict(root.attrs):
            raise EmbeddingsStoreError(
                f"{storage.redact_url(root_url)} already holds a Zarr group that is not an AOM embeddings store"
            )
        root.attrs.update({FORMAT_ATTR: FORMAT_VERSION})
    wanted = version.definition()
    if version.name in _quiet_members(root):
        have = dict(root[version.name].attrs)
        have_def = {k: have.get(k) for k in wanted}
        if have_def != wanted:
            diff = sorted(k for k in wanted if have_def.get(k) != wanted[k])
            raise EmbeddingsStoreError(
                f"version {version.name!r} already exists in {storage.redact_url(root_url)} with a different "
                f"definition (differs in: {', '.join(diff)}); use a new version name for a new model/config"
            )
        return
    attrs = {
        **wanted,
        "format": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "geoemb:model": version.model,
        "geoemb:model_version": version.model_version,
        "geoemb:checkpoint_sha256": version.checkpoint_sha256,
        "geoemb:dimensions": version.dim,
        "geoemb:quantization": version.quantisation,
    }
    zarr.open_group(store=store, path=version.name, mode="a", zarr_format=3, attributes=attrs)


def _time_values(times: Sequence[str]) -> np.ndarray:
    return np.array([int(parse_time(t).timestamp()) for t in times], dtype=np.int64)


def _zone_attrs(grid: ZoneGrid) -> dict[str, Any]:
    ny, nx = grid.shape
    x0, dx, _, y1, _, dy = grid.geotransform
    return {
        "epsg": grid.epsg,
        "crs": f"EPSG:{grid.epsg}",
        "token_ground_m": grid.token_ground_m,
        "tile_size_m": grid.tile_size_m,
        # GeoZarr conventions (proj:/spatial:) so convention-aware readers find the grid.
        "proj:code": f"EPSG:{grid.epsg}",
        "spatial:dimensions": ["y", "x"],
        "spatial:shape": [ny, nx],
        "spatial:transform": [dx, 0.0, x0, 0.0, dy, y1],
        "spatial:bbox": [grid.x0, grid.y0, grid.x1, grid.y1],
        "spatial:registration": "pixel",
    }


def _require_array(group: zarr.Group, name: str, **kwargs: Any) -> tuple[zarr.Array, bool]:
    """Create an array unless it exists (then check it matches). Returns (array, created)."""
    import zarr

    try:
        return group.create_array(name, overwrite=False, **kwargs), True
    except zarr.errors.ContainsArrayError:
        arr = group[name]
        assert isinstance(arr, zarr.Array)
        if tuple(arr.shape) != tuple(kwargs["shape"]) or np.dtype(arr.dtype) != np.dtype(kwargs["dtype"]):
            raise EmbeddingsStoreError(
                f"existing array {arr.path} has shape {arr.shape} / {arr.dtype}, expected "
                f"{kwargs['shape']} / {kwargs['dtype']}: the store was written by a different definition"
            ) from None
        return arr, False


def ensure_zone(
    root_url: str, version_name: str, epsg: int, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Create the zone group template of a version (idempotent, safe to race).

    Everything written here is a pure function of the version definition and the EPSG code, and
    existing arrays are never re-created, so concurrent callers write identical bytes and never
    delete a tile another worker already wrote.
    """
    import zarr

    epsg = check_epsg(epsg)
    version = read_version(root_url, version_name, storage_options)
    grid = ZoneGrid(epsg, version.token_ground_m, version.tile_size_m)
    store = zarr_store(root_url, storage_options)
    path = f"{version_name}/{epsg}"
    try:
        group = zarr.open_group(store=store, path=path, mode="a", zarr_format=3, attributes=_zone_attrs(grid))
    except zarr.errors.ContainsGroupError:  # another worker created it between check and write
        group = zarr.open_group(store=store, path=path, mode="r+", zarr_format=3)
    ny, nx = grid.shape
    tny, tnx = grid.tile_shape
    n = grid.tokens_per_tile
    nt = len(version.times)
    wkt = crs_wkt(epsg)
    geotransform = " ".join(repr(float(v)) for v in grid.geotransform)
    import pyproj

    cf = {k: v for k, v in pyproj.CRS.from_epsg(epsg).to_cf().items() if k != "crs_wkt"}
    _require_array(
        group,
        "spatial_ref",
        shape=(),
        dtype="int64",
        fill_value=0,
        attributes={**cf, "crs_wkt": wkt, "spatial_ref": wkt, "GeoTransform": geotransform},
    )
    x, created = _require_array(
        group,
        "x",
        shape=(nx,),
        chunks=(nx,),
        dtype="float64",
        fill_value=0.0,
        dimension_names=("x",),
        attributes={"standard_name": "projection_x_coordinate", "units": "m", "axis": "X"},
    )
    if created:
        x[:] = grid.x_coords()
    y, created = _require_array(
        group,
        "y",
        shape=(ny,),
        chunks=(ny,),
        dtype="float64",
        fill_value=0.0,
        dimension_names=("y",),
        attributes={"standard_name": "projection_y_coordinate", "units": "m", "axis": "Y"},
    )
    if created:
        y[:] = grid.y_coords()
    tx, created = _require_array(
        group,
        "tile_x",
        shape=(tnx,),
        chunks=(tnx,),
        dtype="float64",
        fill_value=0.0,
        dimension_names=("tile_x",),
        attributes={"long_name": "tile centre easting", "units": "m"},
    )
    if created:
        tx[:] = grid.x0 + (np.arange(tnx) + 0.5) * grid.tile_size_m
    ty, created = _require_array(
        group,
        "tile_y",
        shape=(tny,),
        chunks=(tny,),
        dtype="float64",
        fill_value=0.0,
        dimension_names=("tile_y",),
        attributes={"long_name": "tile centre northing", "units": "m"},
    )
    if created:
        ty[:] = grid.y1 - (np.arange(tny) + 0.5) * grid.tile_size_m
    t, created = _require_array(
        group,
        "time",
        shape=(nt,),
        chunks=(nt,),
        dtype="int64",
        fill_value=0,
        dimension_names=("time",),
        attributes={
            "standard_name": "time",
            "units": "seconds since 1970-01-01T00:00:00",
            "calendar": "proleptic_gregorian",
        },
    )
    if created:
        t[:] = _time_values(version.times)
    int8 = version.quantisation == "int8-sqrt"
    emb_attrs: dict[str, Any] = {
        "grid_mapping": "spatial_ref",
        "coordinates": "spatial_ref",
        "long_name": f"{version.model} token embeddings",
        "quantisation": version.quantisation,
        "nodata": NODATA_Q if int8 else "NaN",
        "dequantise": "v = sign(q) * (q / 127) ** 2; q == -128 -> nodata"
        if int8
        else "float16 values; NaN -> nodata",
    }
    _require_array(
        group,
        "embeddings",
        shape=(nt, ny, nx, version.dim),
        chunks=(1, n, n, version.dim),
        shards=(1, n, n, version.dim),
        dtype=version.dtype,
        fill_value=NODATA_Q if int8 else float("nan"),
        dimension_names=("time", "y", "x", "dim"),
        attributes=emb_attrs,
    )
    _require_array(
        group,
        "pooled",
        shape=(nt, tny, tnx, version.dim),
        chunks=(1, 1, 1, version.dim),
        dtype="float16",
        fill_value=float("nan"),
        dimension_names=("time", "tile_y", "tile_x", "dim"),
        attributes={"long_name": "one pooled vector per tile (float16, NaN = no tile)"},
    )


# ------------------------------------------------------------------------------------------
# Tile writes and completion records


def record_url(root_url: str, version_name: str, tile_id: str, time_index: int) -> str:
    return storage.join(
        storage.normalise_url(root_url), TILES_DIR, version_name, f"t{int(time_index)}", f"{tile_id}.json"
    )


def tile_is_complete(
    root_url: str,
    version_name: str,
    tile_id: str,
    time_index: int,
    storage_options: Mapping[str, Any] | None = None,
) -> bool:
    """True once the tile's completion record exists (status ``complete`` or ``nodata``)."""
    url = record_url(root_url, version_name, tile_id, time_index)
    try:  # one GET, no existence check (s3fs may answer that from a stale listing cache)
        rec = storage.read_json(url, storage_options)
    except (OSError, ValueError):
        return False
    return rec.get("status") in ("complete", "nodata") and rec.get("time_index") == int(time_index)


def list_complete_tiles(
    root_url: str,
    version_name: str,
    time_index: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[int, list[str]]:
    """``{time_index: [tile_id, ...]}`` from the record names alone (one listing, no reads).

    Includes ``nodata`` tiles (their shards are absent and read as nodata).
    """
    base = storage.join(storage.normalise_url(root_url), TILES_DIR, version_name)
    fs, path = storage.filesystem(base, storage_options)
    out: dict[int, list[str]] = {}
    try:
        if time_index is not None:
            subdirs = [int(time_index)]
        else:
            names = [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=False, refresh=True)]
            subdirs = sorted(int(n[1:]) for n in names if re.fullmatch(r"t\d+", n))
        for ti in subdirs:
            try:
                entries = fs.ls(f"{path}/t{ti}", detail=False, refresh=True)  # no stale s3fs listing
            except FileNotFoundError:
                continue
            ids = sorted(
                e.rstrip("/").rsplit("/", 1)[-1][: -len(".json")] for e in entries if e.endswith(".json")
            )
            if ids:
                out[ti] = ids
    except FileNotFoundError:
        return {}
    return out


def read_tile_record(
    root_url: str,
    version_name: str,
    tile_id: str,
    time_index: int,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return dict(storage.read_json(record_url(root_url, version_name, tile_id, time_index), storage_options))


def _tile_bounds(tile: Tile) -> tuple[float, float, float, float]:
    b = tuple(float(v) for v in tile.bounds)
    if len(b) != 4:
        raise EmbeddingsStoreError(f"tile bounds must be (minx, miny, maxx, maxy), got {tile.bounds!r}")
    return b[0], b[1], b[2], b[3]


def write_tile(
    root_url: str,
    version_name: str,
    tile: Tile,
    time_index: int,
    embeddings: np.ndarray,
    pooled: np.ndarray | None,
    provenance: dict[str, Any],
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one tile at one time: its shard of ``embeddings``, its ``pooled`` chunk, then the record.

    ``embeddings`` is ``[h, w, dim]`` float32 on the tile's token grid, **north-up** (row 0 = the
    tile's northern edge, column 0 = western edge), ``h == w == tile_size_m / token_ground_m``;
    a token with any NaN component is nodata. ``pooled`` (``[dim]``) defaults to the normalised
    mean of the tile's valid unit vectors. ``provenance`` must hold ``input_items`` (list of STAC
    item ids) and ``bands`` (list of ``{"name", "gsd_m", ...}``); the model identity comes from
    the version. Re-writing a tile is allowed (same shard, same record name: last write wins).
    Returns the completion record.
    """
    import zarr

    version = read_version(root_url, version_name, storage_options)
    epsg = check_epsg(tile.epsg)
    grid = ZoneGrid(epsg, version.token_ground_m, version.tile_size_m)
    bounds = _tile_bounds(tile)
    row0, row1, col0, col1 = grid.tile_window(bounds)
    trow, tcol = grid.tile_index(bounds)
    nt = len(version.times)
    if not (0 <= int(time_index) < nt):
        raise EmbeddingsStoreError(
            f"time_index {time_index} out of range: version {version_name!r} has {nt} time(s) "
            f"(valid 0..{nt - 1}: {list(version.times)})"
        )
    n = grid.tokens_per_tile
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.shape != (n, n, version.dim):
        raise EmbeddingsStoreError(
            f"embeddings for tile {tile.tile_id} have shape {emb.shape}; expected ({n}, {n}, {version.dim}) "
            f"(tile_size_m / token_ground_m tokens per side, dim)"
        )
    missing = [k for k in ("input_items", "bands") if k not in provenance]
    if missing:
        raise EmbeddingsStoreError(
            f"provenance for tile {tile.tile_id} lacks {missing}: give the input STAC item ids and the "
            f"bands used (name + gsd_m)"
        )
    prov = json.loads(storage.json_dumps(provenance))  # strict JSON now, not at the end
    valid = np.isfinite(emb).all(axis=-1)
    n_valid = int(valid.sum())
    q = encode(emb, version.quantisation)
    if pooled is None:
        pooled_vec = (
            unit(unit(emb[valid]).mean(axis=0)) if n_valid else np.full(version.dim, np.nan, np.float32)
        )
    else:
        pooled_vec = np.asarray(pooled, dtype=np.float32).reshape(-1)
        if pooled_vec.shape != (version.dim,):
            raise EmbeddingsStoreError(f"pooled has shape {np.shape(pooled)}; expected ({version.dim},)")

    try:
        group = _open_group(root_url, f"{version_name}/{epsg}", storage_options, "r+")
        emb_arr = group["embeddings"]
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        ensure_zone(root_url, version_name, epsg, storage_options)
        group = _open_group(root_url, f"{version_name}/{epsg}", storage_options, "r+")
        emb_arr = group["embeddings"]
    assert isinstance(emb_arr, zarr.Array)
    ti = int(time_index)
    emb_arr[ti : ti + 1, row0:row1, col0:col1, :] = q[None]
    pooled_arr = group["pooled"]
    assert isinstance(pooled_arr, zarr.Array)
    pooled_arr[int(time_index), trow, tcol, :] = pooled_vec.astype(np.float16)

    stats = quantisation_error(emb[valid], version.quantisation) if n_valid else quantisation_error(emb[:0])
    record = {
        "format": FORMAT_VERSION,
        "version": version_name,
        "tile_id": tile.tile_id,
        "epsg": epsg,
        "bounds": list(bounds),
        "time_index": int(time_index),
        "time": version.times[int(time_index)],
        "status": "complete" if n_valid else "nodata",
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "window": {"row": [row0, row1], "col": [col0, col1], "tile_row": trow, "tile_col": tcol},
        "valid_tokens": n_valid,
        "total_tokens": n * n,
        "provenance": {
            "model": version.model,
            "model_version": version.model_version,
            "checkpoint_sha256": version.checkpoint_sha256,
            **prov,
        },
        "quantisation": {"method": version.quantisation, "bound_max_abs_error": QUANT_MAX_ABS_ERROR, **stats},
    }
    storage.write_json_atomic(
        record_url(root_url, version_name, tile.tile_id, int(time_index)), record, storage_options
    )
    return record


# ------------------------------------------------------------------------------------------
# STAC


def _footprint(tile_id: str, epsg: int, bounds: Sequence[float]) -> tuple[dict[str, Any], list[float]]:
    """GeoJSON footprint (EPSG:4326, split at the antimeridian) and its lon/lat bbox."""
    from shapely.geometry import shape

    from pipelines.tiling import Tile as GridTile

    b = tuple(float(v) for v in bounds)
    geom = GridTile(tile_id, int(epsg), (b[0], b[1], b[2], b[3])).footprint_wgs84()
    w, s, e, n = shape(geom).bounds
    return dict(geom), [float(w), float(s), float(e), float(n)]


def write_stac(root_url: str, version_name: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Write ``stac/collection.json`` (one collection per version, id = version name) and one item per
    tile with at least one ``complete`` time. Uses the STAC embeddings (``emb``) and projection
    extensions; the ``embeddings`` asset points at the zone's Zarr group. Returns the collection URL.

    Several versions share ``stac/collection.json`` only if they are written one after another: the
    collection of the most recent call wins; items stay under ``stac/items/<version>/``.
    """
    import pystac

    version = read_version(root_url, version_name, storage_options)
    root = storage.normalise_url(root_url)
    done = list_complete_tiles(root, version_name, storage_options=storage_options)
    per_tile: dict[str, list[dict[str, Any]]] = {}
    for ti, ids in sorted(done.items()):
        for tid in ids:
            rec = read_tile_record(root, version_name, tid, ti, storage_options)
            if rec.get("status") == "complete":
                per_tile.setdefault(tid, []).append(rec)
    n = version.tokens_per_tile
    emb_fields = {
        "emb:type": "patch",
        "emb:dimensions": [version.dim],
        "emb:quantization_method": version.quantisation,
        "emb:original_data_type": "float32",
        "emb:chip_size": [n, n],
        "emb:stride": [n, n],
    }
    items_dir = storage.join(root, STAC_DIR, "items", version_name)
    collection_url = storage.join(root, STAC_DIR, "collection.json")
    item_links: list[str] = []
    all_lon: list[float] = []
    all_lat: list[float] = []
    for tid, recs in sorted(per_tile.items()):
        rec0 = recs[0]
        epsg = int(rec0["epsg"])
        bounds = rec0["bounds"]
        geometry, item_bbox = _footprint(tid, epsg, bounds)
        all_lon += [item_bbox[0], item_bbox[2]]
        all_lat += [item_bbox[1], item_bbox[3]]
        times = sorted(parse_time(r["time"]) for r in recs)
        props: dict[str, Any] = {
            **emb_fields,
            "proj:code": f"EPSG:{epsg}",
            "proj:bbox": list(bounds),
            "proj:shape": [n, n],
            "proj:transform": [
                version.token_ground_m,
                0.0,
                bounds[0],
                0.0,
                -version.token_ground_m,
                bounds[3],
            ],
            "gsd": version.token_ground_m,
            "aom:version": version_name,
            "aom:model": version.model,
            "aom:model_version": version.model_version,
            "aom:checkpoint_sha256": version.checkpoint_sha256,
            "aom:time_indices": [int(r["time_index"]) for r in recs],
            "aom:input_items": sorted({i for r in recs for i in r["provenance"].get("input_items", [])}),
            "aom:bands": recs[-1]["provenance"].get("bands", []),
            "aom:quantisation_max_abs_error": max(
                (r["quantisation"].get("max_abs_error") or 0.0) for r in recs
            ),
        }
        if len(times) > 1:
            props["start_datetime"] = times[0].isoformat()
            props["end_datetime"] = times[-1].isoformat()
        item = pystac.Item(
            id=tid,
            geometry=geometry,
            bbox=item_bbox,
            datetime=times[0] if len(times) == 1 else None,
            properties=props,
            stac_extensions=[EMB_EXTENSION, PROJ_EXTENSION],
            collection=version_name,
        )
        row0, row1 = rec0["window"]["row"]
        col0, col1 = rec0["window"]["col"]
        item.add_asset(
            "embeddings",
            pystac.Asset(
                href=f"../../../{version_name}/{epsg}",
                media_type="application/vnd.zarr; version=3",
                roles=["data", "embeddings"],
                title=f"{version.dim}-d token embeddings ({version.quantisation}) in the EPSG:{epsg} zone grid",
                extra_fields={
                    "zarr:variable": "embeddings",
                    "aom:window": {"y": [row0, row1], "x": [col0, col1]},
                    "emb:dimensions": [version.dim],
                    "emb:quantization_method": version.quantisation,
                },
            ),
        )
        d = item.to_dict(include_self_link=False, transform_hrefs=False)
        d["links"] = [
            {"rel": "collection", "href": "../../collection.json", "type": "application/json"},
            {"rel": "parent", "href": "../../collection.json", "type": "application/json"},
        ]
        storage.write_json_atomic(storage.join(items_dir, f"{tid}.json"), d, storage_options)
        item_links.append(f"./items/{version_name}/{tid}.json")

    times_all = sorted(parse_time(t) for t in version.times)
    bbox = (
        [min(all_lon), min(all_lat), max(all_lon), max(all_lat)] if all_lon else [-180.0, -90.0, 180.0, 90.0]
    )
    collection = pystac.Collection(
        id=version_name,
        description=(
            f"AOM token embeddings from {version.model} {version.model_version} "
            f"(checkpoint sha256 {version.checkpoint_sha256}): {version.dim}-d vectors every "
            f"{version.token_ground_m:g} m, in per-UTM-zone Zarr v3 grids."
        ),
        extent=pystac.Extent(
            pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[times_all[0], times_all[-1]]])
        ),
        license="other",
        stac_extensions=[EMB_EXTENSION],
        extra_fields={
            **emb_fields,
            "aom:token_ground_m": version.token_ground_m,
            "aom:tile_size_m": version.tile_size_m,
        },
        title=f"AOM embeddings {version_name}",
        keywords=["embeddings", "foundation model", "aom"],
    )
    cd = collection.to_dict(include_self_link=False, transform_hrefs=False)
    cd["item_assets"] = {
        "embeddings": {
            "type": "application/vnd.zarr; version=3",
            "roles": ["data", "embeddings"],
            "emb:dimensions": [version.dim],
            "emb:quantization_method": version.quantisation,
        }
    }
    cd["links"] = [
        {"rel": "root", "href": "./collection.json", "type": "application/json"},
        *({"rel": "item", "href": h, "type": "application/geo+json"} for h in item_links),
    ]
    storage.write_json_atomic(collection_url, cd, storage_options)
    return collection_url

"""What a cube run builds: :class:`CubeSpec`, the reflectance encodings and per-asset skip records.

Shared by :mod:`pipelines.cubes.assembly` and :mod:`pipelines.cubes.group_load` (pixels), :mod:`pipelines.cubes.store` (Zarr layout) and
:mod:`pipelines.cubes` (runs). See ``docs/cubes.md`` for the layout these settings produce.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pipelines.errors import InputError
from pipelines.registry import DEFAULT_CATALOG, CollectionSpec, Registry, load_registry
from pipelines.tiling import TileGrid

LAYOUT_VERSION = 2
"""Layout 2: each GSD group's pixel lattice lies on its items' native pixel grid (``lattice_shift_m``,
:mod:`pipelines.cubes.lattice`); layout 1 put every lattice through the tile origin."""
Encoding = Literal["int16", "float16"]

#: int16 encoding: stored = round(reflectance / INT16_SCALE), clipped to +-INT16_MAX; INT16_FILL = NaN.
INT16_SCALE = 1e-4
INT16_FILL = -32768
INT16_MAX = 32767

COMPOSITES = ("none", "median")
"""``CubeSpec.composite`` values: ``none`` (every acquisition, the default) or ``median``
(:mod:`pipelines.cubes.composite`)."""

_RESAMPLING = {"nearest", "bilinear", "cubic", "average", "mode", "min", "max", "med", "q1", "q3"}


@dataclass(frozen=True)
class CubeSpec:
    """Settings of a cube run (never credentials: it is recorded in the store).

    ``grid``: the tile grid; ``collections``: registry collection ids of ``catalog`` to load;
    ``encoding``: ``int16`` (reflectance * 1e4, ``_FillValue`` -32768, decodes to float32 with NaN)
    or ``float16`` (NaN = missing); ``chunk_px``: inner Zarr chunk edge in pixels (chip size);
    ``shard_px``: largest shard edge in pixels (a multiple of ``chunk_px``; a 7680 m tile at 10 m is
    one 768 px shard); ``resampling``: for the reflectance bands (quality masks always use nearest);
    ``missing_proj``: items whose assets lack projection metadata are ``"skip"``-ped and recorded,
    or ``"read_header"`` takes the grid from the file header; ``preflight``: open every asset before
    loading so 404s and corrupt headers are skipped per item rather than failing the load;
    ``skip_unreachable``: treat unreachable assets (network errors, HTTP 5xx) like missing ones
    instead of failing the tile for a later retry; ``zstd_level``: compression level;
    ``registry_files``: extra registry YAML files (paths) merged over the built-in one;
    ``composite``: ``none`` (every acquisition) or ``median`` (one median per tile and group,
    :mod:`pipelines.cubes.composite`).
    """

    grid: TileGrid
    collections: tuple[str, ...]
    catalog: str = DEFAULT_CATALOG
    encoding: Encoding = "int16"
    chunk_px: int = 256
    shard_px: int = 2048
    resampling: str = "nearest"
    missing_proj: Literal["skip", "read_header"] = "skip"
    preflight: bool = True
    skip_unreachable: bool = False
    zstd_level: int = 3
    registry_files: tuple[str, ...] = field(default=())
    composite: str = "none"

    def __post_init__(self) -> None:
        if isinstance(self.collections, str):
            object.__setattr__(self, "collections", tuple(c for c in self.collections.split(",") if c))
        object.__setattr__(self, "collections", tuple(dict.fromkeys(self.collections)))
        object.__setattr__(self, "registry_files", tuple(str(p) for p in self.registry_files))
        if not self.collections:
            raise InputError("CubeSpec.collections is empty: name at least one collection id")
        if self.encoding not in ("int16", "float16"):
            raise InputError(f"encoding must be 'int16' or 'float16', got {self.encoding!r}")
        if self.chunk_px < 16 or self.chunk_px % 16:
            raise InputError(f"chunk_px must be a multiple of 16 (>= 16), got {self.chunk_px}")
        if self.shard_px < self.chunk_px or self.shard_px % self.chunk_px:
            raise InputError(f"shard_px ({self.shard_px}) must be a multiple of chunk_px ({self.chunk_px})")
        if self.resampling not in _RESAMPLING:
            raise InputError(f"resampling must be one of {sorted(_RESAMPLING)}, got {self.resampling!r}")
        if self.missing_proj not in ("skip", "read_header"):
            raise InputError(f"missing_proj must be 'skip' or 'read_header', got {self.missing_proj!r}")
        if self.composite not in COMPOSITES:
            raise InputError(f"composite must be one of {', '.join(COMPOSITES)}, got {self.composite!r}")
        if not 0 <= self.zstd_level <= 22:
            raise InputError(f"zstd_level must be in 0..22, got {self.zstd_level}")
        for cid in self.collections:
            self.collection_spec(cid)  # unknown collection: fail now, with the known ones listed

    # ------------------------------------------------------------------ registry
    def registry(self) -> Registry:
        return load_registry(self.registry_files)

    def collection_spec(self, collection: str) -> CollectionSpec:
        return self.registry().collection(collection, self.catalog)

    def band_groups(self, collection: str) -> dict[str, tuple[float, tuple[str, ...]]]:
        """``gsd_label -> (gsd_m, band names)`` for a collection (its default band set), finest GSD first."""
        return _groups_of(self.collection_spec(collection))

    def variant_groups(
        self, collection: str
    ) -> list[tuple[CollectionSpec, dict[str, tuple[float, tuple[str, ...]]]]]:
        """Each band set of a collection (:meth:`~pipelines.registry.Registry.variants`: Landsat TM,
        ETM+ and OLI items of ``landsat-c2-l2``) with its groups; the default set's groups are
        labelled ``30m``, another set's ``30m-<sensor>`` (``30m-landsat-tm``)."""
        out = []
        for i, cs in enumerate(self.registry().variants(collection, self.catalog)):
            groups = _groups_of(cs)
            if i:
                groups = {f"{label}-{cs.sensor.name}": g for label, g in groups.items()}
            out.append((cs, groups))
        return out

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict[str, Any]:
        return {
            "grid": {"kind": "utm", "tile_size_m": self.grid.tile_size_m},
            "collections": list(self.collections),
            "catalog": self.catalog,
            "encoding": self.encoding,
            "chunk_px": self.chunk_px,
            "shard_px": self.shard_px,
            "resampling": self.resampling,
            "missing_proj": self.missing_proj,
            "layout_version": LAYOUT_VERSION,
            # only when set, so stores of acquisitions keep their fingerprint
            **({"composite": self.composite} if self.composite != "none" else {}),
        }

    def layout_dict(self) -> dict[str, Any]:
        """The settings that decide what the store holds (a rerun must match them), including a
        digest of the registry entries (assets, scale/offset, mask rule) of the collections."""
        d = self.to_dict()
        d.pop("missing_proj")
        entries = []
        for c in self.collections:  # the default band set, then any other (Landsat TM, ETM+)
            entries.append(_registry_content(self.collection_spec(c)))
            entries.extend(_registry_content(v) for v in self.registry().variants(c, self.catalog)[1:])
        text = json.dumps(entries, sort_keys=True, default=str)
        d["registry_digest"] = hashlib.sha256(text.encode()).hexdigest()[:16]
        return d

    @property
    def fingerprint(self) -> str:
        text = json.dumps(self.layout_dict(), sort_keys=True)
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _registry_content(cs: CollectionSpec) -> dict[str, Any]:
    """What a collection's registry entry says about the pixels (assets, bands, scale/offset, DN offset
    rules, quality mask), as plain data: the digest must follow the content, never the Python class
    names or prose descriptions, so refactoring the registry code keeps existing stores valid."""
    content = dataclasses.asdict(cs)
    content["sensor"].pop("description", None)
    for how_read in ("aliases", "access", "platforms"):  # how files are found, not what the pixels are
        content.pop(how_read, None)
    return content


def _groups_of(cs: CollectionSpec) -> dict[str, tuple[float, tuple[str, ...]]]:
    groups: dict[float, list[str]] = {}
    for band in cs.sensor.bands:
        if band.name in cs.assets:
            groups.setdefault(float(band.gsd_m), []).append(band.name)
    return {gsd_label(g): (g, tuple(groups[g])) for g in sorted(groups)}


def reflectance_attrs(encoding: Encoding) -> dict[str, Any]:
    """The CF attributes of a group's ``reflectance`` variable (xarray decodes int16 with them)."""
    attrs: dict[str, Any] = {"long_name": "surface reflectance", "units": "1", "grid_mapping": "spatial_ref"}
    if encoding == "int16":
        attrs.update({"scale_factor": INT16_SCALE, "_FillValue": INT16_FILL})
    return attrs


def encode_reflectance(refl: np.ndarray, encoding: Encoding = "int16") -> np.ndarray:
    """Reflectance (float, NaN = missing) -> the stored values of ``encoding`` (see ``docs/cubes.md``).

    int16: ``round(reflectance / INT16_SCALE)`` (half to even, in the input's float precision),
    clipped to +-INT16_MAX, INT16_FILL where missing; float16: the values as float16. Cube assembly
    encodes straight from DNs instead (:func:`pipelines.cubes.group_load.encode_block`, exact for
    Sentinel-2); this is for reflectance that already exists as floats (synthetic stores).
    """
    refl = np.asarray(refl)
    if encoding == "float16":
        return refl.astype(np.float16)
    missing = np.isnan(refl)
    q = np.rint(np.where(missing, 0, refl) / INT16_SCALE)
    out = np.clip(q, -INT16_MAX, INT16_MAX).astype(np.int16)
    out[missing] = INT16_FILL
    return out


def gsd_label(gsd: float) -> str:
    """``10.0 -> "10m"``, ``463.3 -> "463.3m"`` (the group name of a GSD)."""
    return f"{gsd:g}m"


@dataclass(frozen=True)
class SkippedAsset:
    """An (item, asset) left out of a tile, and why. ``transient``: may succeed on a retry."""

    item: str
    asset: str
    reason: str
    transient: bool = False

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"item": self.item, "asset": self.asset, "reason": self.reason}
        if self.transient:
            d["transient"] = True
        return d

"""The embeddings store format: constants, the version descriptor and the store's own errors."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pipelines import storage
from pipelines.errors import InputError
from pipelines.outputs import PROJ_CONVENTION as PROJ_CONVENTION
from pipelines.outputs import SPATIAL_CONVENTION as SPATIAL_CONVENTION

# 3: format 2 whose consolidated tile vectors ``<zone>/tiles/vectors`` lie on the zone's own tile dims
# ``(time, dim, tile_y, tile_x)`` (coordinates ``tile_x``/``tile_y`` = the zone's): the store opens as
# one ``xarray.DataTree``. 2: band-first ``embeddings (time, dim, y, x)`` and ``pooled (time, dim,
# tile_y, tile_x)``, Zarr conventions registered in ``zarr_conventions``; its ``tiles/`` group has its
# own ``x``/``y`` (tile centres), which collide with the zone's token ``x``/``y`` in a DataTree.
# 1: ``(time, y, x, dim)``. Older formats are still read, and written to for versions created in them
# (a rerun finishes an old version in its own layout).
FORMAT_VERSION = 3


READABLE_FORMATS = (1, 2, 3)


FORMAT_ATTR = "aom_embeddings_format"


TILES_DIR = "_tiles"


STAC_DIR = "stac"


LEASES_DIR = "_leases"
"""Leases of the store (``_leases/shared.json``: :func:`pipelines.embeddings.store.shared_writer`;
``_leases/tile@<version>@t<i>@<tile_id>.json``: :func:`pipelines.embeddings.records.tile_lease`)."""

# Zone-wide grid extent before snapping outwards to whole tiles (metres, UTM north and south alike:
# southern zones carry the 10 000 km false northing, so their northings also lie in 0..10 000 km).
ZONE_X_RANGE = (100_000.0, 900_000.0)


ZONE_Y_RANGE = (0.0, 10_000_000.0)

Quantisation = Literal["int8-sqrt", "float16"]


QUANTISATIONS: tuple[Quantisation, ...] = ("int8-sqrt", "float16")
"""How a version may store its values (:mod:`pipelines.embeddings.quantize`)."""


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# The published STAC embeddings extension (geo-embeddings/embeddings-stac-specification); its
# schema builds on STAC core 1.0.0, so the items and collections we write say stac_version 1.0.0.
EMB_EXTENSION = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"


STAC_VERSION = "1.0.0"


PROJ_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"


# Zarr conventions (zarr-conventions spec: one entry per convention a node uses, in its
# ``zarr_conventions`` attribute); each entry's fields are the constants the convention's schema fixes.
# proj:/spatial: (PROJ_CONVENTION, SPATIAL_CONVENTION, re-exported here) live with every output's
# georeferencing in pipelines/outputs/conventions.py; geoemb: is this store's own.
GEOEMB_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/geo-embeddings/embeddings-zarr-convention/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/geo-embeddings/embeddings-zarr-convention/blob/v1/README.md",
    "uuid": "61c12cc5-0e28-4056-999a-480cf3fb7e4c",
    "name": "geoemb:",
    "description": "Geoembeddings convention for geospatial embedding arrays with model provenance",
}


# what ``emb:model`` / ``geoemb:model`` point at: the AOM model description (the checkpoint hash is kept
# beside it: ``checkpoint_sha256``)
MODEL_HREF = "https://arxiv.org/abs/2512.17224"


def embeddings_dims(fmt: int) -> tuple[str, ...]:
    """Dimension order of the ``embeddings`` array in a store format."""
    return ("time", "dim", "y", "x") if fmt >= 2 else ("time", "y", "x", "dim")


def pooled_dims(fmt: int) -> tuple[str, ...]:
    """Dimension order of the ``pooled`` (tile vectors) array in a store format."""
    return ("time", "dim", "tile_y", "tile_x") if fmt >= 2 else ("time", "tile_y", "tile_x", "dim")


def tile_vector_dims(fmt: int) -> tuple[str, ...]:
    """Dimension order of the consolidated ``tiles/vectors`` array in a store format (its spatial dims
    are the zone's ``tile_y``/``tile_x`` from format 3; ``y``/``x`` of the tiles group's own before)."""
    return ("time", "dim", "tile_y", "tile_x") if fmt >= 3 else ("time", "dim", "y", "x")


class EmbeddingsStoreError(InputError):
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
        if self.quantisation not in QUANTISATIONS:
            raise EmbeddingsStoreError(
                f"unknown quantisation {self.quantisation!r}; choose one of {', '.join(QUANTISATIONS)}"
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


def period_bounds(version: EmbeddingsVersion, time_index: int) -> tuple[datetime, datetime]:
    """(start, end) of a time slice: the composite period recorded in ``config["periods"]`` (an RFC 3339
    range ``a/b``; a date-only end means the end of that day, ``..`` an open end) or, without one, the
    instant of the time label."""
    label = parse_time(version.times[int(time_index)])
    periods = version.config.get("periods") if isinstance(version.config, Mapping) else None
    if not isinstance(periods, list) or len(periods) != len(version.times):
        return label, label
    text = str(periods[int(time_index)])
    a, _, b = text.partition("/")
    b = b or a
    start = label if a in ("", "..") else parse_time(a)
    if b in ("", ".."):
        end = max(start, label)
    else:
        end = parse_time(b)
        if "T" not in b:  # a date-only end is inclusive: the last second of that day
            end = end + timedelta(days=1) - timedelta(seconds=1)
    return start, end


def parse_time(text: str) -> datetime:
    """ISO date/datetime -> aware UTC datetime (naive input is UTC)."""
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise EmbeddingsStoreError(f"time {text!r} is not an ISO 8601 date/datetime") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)

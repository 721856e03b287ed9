"""The AOM embeddings store: a Zarr v3 hierarchy of per-UTM-zone token grids (format 3).

Layout (see ``docs/embeddings.md`` for the full description)::

    <root>/                              Zarr v3 group, attrs {"aom_embeddings_format": 3}
      <version>/                         one model/checkpoint; attrs = the EmbeddingsVersion definition
                                         + geoemb: convention attributes (registered in zarr_conventions)
        <epsg>/                          one UTM zone, fixed zone-wide grid at token_ground_m (proj:/spatial:)
          embeddings (time, dim, y, x)   int8 (int8-sqrt) or float16; chunk = shard = one tile
          pooled     (time, dim, tile_y, tile_x) float16; one chunk per tile
          x, y, tile_x, tile_y, time, spatial_ref   coordinates + CF grid mapping
          tiles/                         consolidated tile vectors (time, dim, tile_y, tile_x): tilevectors.py
      _tiles/<version>/t<time_index>/<tile_id>.json   completion records (written after the data)
      stac/collection.json, stac/catalogs/<version>/<block>.json, stac/items/<version>/<tile_id>.json

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

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines import storage
from pipelines.embeddings.format import (
    FORMAT_ATTR,
    FORMAT_VERSION,
    GEOEMB_CONVENTION,
    LEASES_DIR,
    MODEL_HREF,
    READABLE_FORMATS,
    EmbeddingsStoreError,
    EmbeddingsVersion,
    embeddings_dims,
    parse_time,
    pooled_dims,
)
from pipelines.embeddings.grid import ZoneGrid, check_epsg, crs_wkt
from pipelines.embeddings.metadata import chip_layout, store_encoding
from pipelines.embeddings.quantize import NODATA_Q
from pipelines.outputs import geo_convention_attrs

if TYPE_CHECKING:  # the tiling module is only needed for its Tile shape (duck-typed at runtime)
    import zarr

    from pipelines.outputs import Lease


# ------------------------------------------------------------------------------------------
# Zarr plumbing


def zarr_store(
    root_url: str, storage_options: Mapping[str, Any] | None = None, read_only: bool = False
) -> Any:
    """A zarr v3 store on ``root_url`` (local path or any fsspec URL)."""
    from zarr.storage import FsspecStore, LocalStore

    url = storage.normalise_url(root_url)
    if storage.is_local(url):
        path = storage.local_href(url)
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


SHARED_LEASE = "shared.json"
"""The store's lease (in ``_leases/``) for the documents every run rewrites: see :func:`shared_writer`."""

SHARED_WAIT_S = 600.0
"""How long :func:`shared_writer` waits for another run's lease before it gives up (LeaseHeldError)."""


@contextlib.contextmanager
def shared_writer(
    root_url: str, storage_options: Mapping[str, Any] | None = None, wait_s: float | None = None
) -> Iterator[Lease]:
    """Hold the store's lease ``_leases/shared.json`` (:class:`pipelines.outputs.Lease`) while the
    documents that every run reads, modifies and writes back are updated: the STAC collection and
    child catalogs (:func:`~pipelines.embeddings.stac_catalog.write_stac`) and the consolidated tile-vector
    grid (:func:`~pipelines.embeddings.tilevectors.consolidate_tile_vectors`). Per-tile objects
    (shards, records, items) are shared by no two tiles; their writer holds the tile's own lease
    (:func:`~pipelines.embeddings.records.tile_lease`).

    Another live run's lease is waited for, up to ``wait_s`` (default :data:`SHARED_WAIT_S`), then
    LeaseHeldError; a lease whose run is gone (killed) is taken over after its TTL or at once on the
    same host. Without it two runs that read a child catalog before either wrote it back each wrote
    only their own tiles' links, and an item became unreachable from the collection."""
    from pipelines.outputs import Lease

    url = storage.join(storage.normalise_url(root_url), LEASES_DIR, SHARED_LEASE)
    lease = Lease(url, storage_options)
    lease.acquire(wait_s=SHARED_WAIT_S if wait_s is None else wait_s)
    try:
        yield lease
    finally:
        lease.release()


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
    if root.attrs.get(FORMAT_ATTR) not in READABLE_FORMATS:
        raise EmbeddingsStoreError(
            f"{storage.redact_url(root_url)} is a Zarr group but not an AOM embeddings store this code reads "
            f"(attrs {FORMAT_ATTR}={root.attrs.get(FORMAT_ATTR)!r}; readable formats: {list(READABLE_FORMATS)})"
        )
    return root


def version_format(root_url: str, version_name: str, storage_options: Mapping[str, Any] | None = None) -> int:
    """The layout format of a version's arrays (its group attr ``format``; 1 when absent)."""
    grp = _open_group(root_url, version_name, storage_options, "r")
    fmt = grp.attrs.get("format", 1)
    return int(fmt) if isinstance(fmt, int | float | str) else 1


def array_dims(arr: Any) -> tuple[str, ...]:
    """The ``dimension_names`` of a Zarr v3 array (empty when it has none)."""
    return tuple(str(d) for d in (getattr(arr.metadata, "dimension_names", None) or ()))


def band_first(arr: Any) -> bool:
    """True for a band-first (format 2 and 3) ``embeddings`` array ``(time, dim, y, x)``."""
    return array_dims(arr) == embeddings_dims(2)


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


def geoemb_attrs(
    version: EmbeddingsVersion, source_data: Sequence[str] = (), input_gsd_m: float | None = None
) -> dict[str, Any]:
    """The geoemb: Zarr convention attributes of a version group (every required field, the
    quantisation as the convention's object, the convention registered in ``zarr_conventions``).

    ``source_data``: the inputs (catalog or cube store), written as absolute URIs (``file://`` for
    local paths, credentials redacted); without any, the version's completion records (relative
    reference: ``create_version`` passes their absolute URI instead). ``input_gsd_m``: the finest input
    band's GSD, for ``chip_size`` (:func:`pipelines.embeddings.metadata.chip_layout`, as in the STAC).
    """
    encoding = store_encoding(version)
    attrs: dict[str, Any] = {
        "zarr_conventions": [dict(GEOEMB_CONVENTION)],
        "geoemb:type": "chip",
        "geoemb:dimensions": version.dim,
        "geoemb:model": MODEL_HREF,
        "geoemb:source_data": [storage.public_uri(s) for s in source_data if s]
        or [f"../_tiles/{version.name}/"],
        "geoemb:data_type": encoding.data_type,
        "geoemb:gsd": version.token_ground_m,
        "geoemb:chip_layout": chip_layout(version, input_gsd_m),
        "geoemb:spatial_layout": "utm_zones",
        "geoemb:model_name": version.model,
        "geoemb:model_version": version.model_version,
        "geoemb:checkpoint_sha256": version.checkpoint_sha256,
    }
    if (
        encoding.quantization is not None
    ):  # v = sign(q) * (q / 127) ** 2, q == -128 -> nodata (docs/embeddings.md)
        attrs["geoemb:quantization"] = dict(encoding.quantization)
    return attrs


def create_version(
    root_url: str,
    version: EmbeddingsVersion,
    storage_options: Mapping[str, Any] | None = None,
    source_data: Sequence[str] = (),
    fmt: int = FORMAT_VERSION,
    input_gsd_m: float | None = None,
) -> None:
    """Create the root (if needed) and the version group. Idempotent for the same definition.

    A different definition under an existing name is refused: pick a new name (a new checkpoint
    must be a new version, so nobody mixes vectors from two models). New versions are written in
    format 3 (band-first, tile vectors on the zone's tile dims); an existing format-1 or -2 version keeps
    its layout. ``fmt=1``/``fmt=2`` write the old layouts (for readers that only know those, and to test
    that this code still reads them).
    """
    import zarr

    if fmt not in READABLE_FORMATS:
        raise EmbeddingsStoreError(f"unknown store format {fmt!r}; choose one of {list(READABLE_FORMATS)}")
    store = zarr_store(root_url, storage_options)
    try:
        root = zarr.open_group(store=store, mode="r+", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        root = zarr.open_group(store=store, mode="a", zarr_format=3, attributes={FORMAT_ATTR: fmt})
    if root.attrs.get(FORMAT_ATTR) not in READABLE_FORMATS:
        if any(True for _ in _quiet_members(root)) or dict(root.attrs):
            raise EmbeddingsStoreError(
                f"{storage.redact_url(root_url)} already holds a Zarr group that is not an AOM embeddings store"
            )
        root.attrs.update({FORMAT_ATTR: fmt})
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
        "format": fmt,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **geoemb_attrs(
            version,
            source_data or [storage.join(storage.normalise_url(root_url), "_tiles", version.name, "")],
            input_gsd_m,
        ),
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
        **geo_convention_attrs(grid.epsg, [dx, 0.0, x0, 0.0, dy, y1], (ny, nx)),
    }


def require_time_coord(group: zarr.Group, times: Sequence[str]) -> None:
    """The CF ``time`` coordinate (seconds since 1970) of a zone or tile-vector group (see
    :func:`require_coord`)."""
    require_coord(
        group,
        "time",
        _time_values(times),
        shape=(len(times),),
        chunks=(len(times),),
        dtype="int64",
        fill_value=0,
        dimension_names=("time",),
        attributes={
            "standard_name": "time",
            "units": "seconds since 1970-01-01T00:00:00",
            "calendar": "proleptic_gregorian",
        },
    )


def require_coord(group: zarr.Group, name: str, values: np.ndarray, **kwargs: Any) -> zarr.Array:
    """A coordinate array of a template (:func:`_require_array`) holding ``values``: written when the
    array is created and again whenever what it holds is not ``values``.

    Creating an array and writing its values are two writes: a run killed between them left the
    array at its fill value (``x`` all 0.0: exports without a CRS or transform), and a later run,
    finding the array, never wrote it. Coordinates are small and a pure function of the definition,
    so every call reads them back (one request each) and rewrites them when they differ: the next
    run repairs what a killed one left, and concurrent callers write identical bytes."""
    arr, created = _require_array(group, name, **kwargs)
    want = np.asarray(values, dtype=np.dtype(kwargs["dtype"]))
    if created or not np.array_equal(np.asarray(arr[...]), want):
        arr[...] = want
    return arr


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
    fmt = version_format(root_url, version_name, storage_options)
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
    require_coord(
        group,
        "x",
        grid.x_coords(),
        shape=(nx,),
        chunks=(nx,),
        dtype="float64",
        fill_value=0.0,
        dimension_names=("x",),
        attributes={"standard_name": "projection_x_coordinate", "units": "m", "axis": "X"},
    )
    require_coord(
        group,
        "y",
        grid.y_coords(),
        shape=(ny,),
        chunks=(ny,),
        dtype="float64",
        fill_value=0.0,
        dimension_names=("y",),
        attributes={"standard_name": "projection_y_coordinate", "units": "m", "axis": "Y"},
    )
    require_coord(
        group,
        "tile_x",
        grid.tile_x_coords(),
        shape=(tnx,),
        chunks=(tnx,),
        dtype="float64",
        fill_value=0.0,
        dimension_names=("tile_x",),
        attributes={"long_name": "tile centre easting", "units": "m"},
    )
    require_coord(
        group,
        "tile_y",
        grid.tile_y_coords(),
        shape=(tny,),
        chunks=(tny,),
        dtype="float64",
        fill_value=0.0,
        dimension_names=("tile_y",),
        attributes={"long_name": "tile centre northing", "units": "m"},
    )
    require_time_coord(group, version.times)
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
    d = version.dim
    if fmt >= 2:  # band-first: GDAL/rioxarray take (y, x) as the raster plane, dim as bands
        emb_shape, emb_chunk = (nt, d, ny, nx), (1, d, n, n)
        pooled_shape, pooled_chunk = (nt, d, tny, tnx), (1, d, 1, 1)
    else:
        emb_shape, emb_chunk = (nt, ny, nx, d), (1, n, n, d)
        pooled_shape, pooled_chunk = (nt, tny, tnx, d), (1, 1, 1, d)
    _require_array(
        group,
        "embeddings",
        shape=emb_shape,
        chunks=emb_chunk,
        shards=emb_chunk,
        dtype=version.dtype,
        fill_value=NODATA_Q if int8 else float("nan"),
        dimension_names=embeddings_dims(fmt),
        attributes=emb_attrs,
    )
    _require_array(
        group,
        "pooled",
        shape=pooled_shape,
        chunks=pooled_chunk,
        dtype="float16",
        fill_value=float("nan"),
        dimension_names=pooled_dims(fmt),
        attributes={"long_name": "one pooled vector per tile (float16, NaN = no tile)"},
    )

"""The Zarr v3 cube store: layout, per-tile writes, completion records, and the one reader.

Layout (see ``docs/cubes.md``)::

    <out>/zarr.json                                   root group; attrs["aom_cubes"] = layout + spec
    <out>/<tile_id>/<collection>/<gsd_label>/         one xarray Dataset per (tile, collection, GSD)
        reflectance   (time, band, y, x) int16, scale_factor 1e-4, _FillValue -32768
                      chunks (1, 1, chunk_px, chunk_px), sharded (1, n_bands, shard, shard)
        time, band, center_wavelength_nm, fwhm_nm, common_name, band_gsd_m, source_items, solar_day, ...
    <out>/_tiles/<tile_id>.json                       completion record, written last (atomically)
    <out>/_leases/<tile_id>.json                      writer lease while a run builds the tile
    <out>/_rebuild/<tile_id>/                         a complete tile's rebuild, until swapped in (rebuild.py)

A tile is visible to readers only once its record exists; a tile without a record is deleted and
rewritten by the next run that takes its lease (``docs/safety.md``): a run never clears a tile
whose lease another live run holds. Every object under ``<out>/<tile_id>/`` is written by the one task
that owns the tile, so no two writers ever share a shard (or any other object). A record, once
written, is never rewritten; its ``status`` is ``complete`` (the tile holds data) or ``empty``.

:class:`CubeStore` is the only reader and writer of this format: cube runs write through it, the
synthetic stores of :mod:`pipelines.testing` too, and embedding (:mod:`pipelines.embed`) and
training (through the ``aom_model.train.cube_reader.CubeReader`` protocol, see
:mod:`pipelines.pretrain`) read through it. Group metadata checks and window reads are in
:mod:`pipelines.cubes.groups`.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from pipelines.cubes.groups import GroupMeta, group_meta, read_window
from pipelines.cubes.lattice import lattice_shift
from pipelines.cubes.shards import RawGroup, open_raw_group
from pipelines.cubes.spec import INT16_FILL, LAYOUT_VERSION, CubeSpec
from pipelines.errors import CubeDataError
from pipelines.outputs import Lease, dataset_convention_attrs
from pipelines.runs import TileStatus
from pipelines.storage import (
    MAX_PREFIX_LISTINGS,
    filesystem,
    is_local,
    join,
    json_safe,
    list_files,
    normalise_url,
    read_many,
    redact_url,
    s3_options,
    write_json_atomic,
)
from pipelines.tiling import TileGrid, column_prefixes

log = logging.getLogger(__name__)

RECORDS_DIR = "_tiles"
LEASES_DIR = "_leases"
LEASE_TTL_S = 120.0
"""Seconds without a heartbeat after which a tile's writer counts as dead (renewed every third)."""
ROOT_ATTR = "aom_cubes"


class CubeStoreError(CubeDataError, RuntimeError):
    """The store is missing, incompatible with the spec, or a tile is not complete (a
    :class:`~pipelines.errors.CubeDataError`, so readers that catch that see it too)."""


def group_path(tile_id: str, collection: str, gsd_label: str) -> str:
    return f"{tile_id}/{collection}/{gsd_label}"


def group_entry(tile_id: str, ds: xr.Dataset, valid_fraction: Sequence[float]) -> dict[str, Any]:
    """A completion record's entry for one group written with :meth:`CubeStore.write_group`."""
    collection, label = str(ds.attrs["collection"]), str(ds.attrs["gsd_label"])
    return {
        "collection": collection,
        "gsd_label": label,
        "gsd_m": float(ds.attrs["gsd_m"]),
        "path": group_path(tile_id, collection, label),
        "bands": [str(b) for b in ds["band"].values],
        "shape": [int(n) for n in ds["reflectance"].shape],
        "times": [str(t)[:26] for t in ds["time"].values.astype("datetime64[us]")],
        "source_items": [str(s) for s in ds["source_items"].values],
        "valid_fraction": [round(f, 6) for f in valid_fraction],
        "lattice_shift_m": list(lattice_shift(ds.attrs)),
    }


def tile_record(
    *,
    tile_id: str,
    epsg: int,
    bounds: Sequence[float],
    spec: CubeSpec,
    status: str,
    reason: str,
    groups: Sequence[Mapping[str, Any]],
    dropped_groups: Sequence[Mapping[str, Any]] = (),
    items: Sequence[str] = (),
    skipped: Sequence[Mapping[str, Any]] = (),
    written_at: str | None = None,
    considered_items: Sequence[str] | Mapping[str, str | None] = (),
) -> dict[str, Any]:
    """A tile's completion record (``complete`` with ``groups``, or ``empty``; :meth:`CubeStore.write_record`);
    ``written_at``: default now (UTC); ``considered_items``: ids, or id -> version (freshness.py)."""
    if status not in (TileStatus.COMPLETE, TileStatus.EMPTY):
        raise ValueError(f"a completion record's status is 'complete' or 'empty', got {status!r}")
    return {
        "status": status,
        "tile_id": tile_id,
        "epsg": epsg,
        "bounds": list(bounds),
        "tile_size_m": spec.grid.tile_size_m,
        "collections": list(spec.collections),
        "groups": list(groups),
        "dropped_groups": list(dropped_groups),
        "items": list(items),
        "considered_items": sorted(considered_items),  # every item the build was given (freshness.py)
        "item_versions": dict(considered_items) if isinstance(considered_items, Mapping) else {},
        "skipped": list(skipped),
        "reason": reason,
        "encoding": spec.encoding,
        "spec_fingerprint": spec.fingerprint,
        "layout_version": LAYOUT_VERSION,
        "written_at": written_at or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


class CubeStore:
    """A cube store at any fsspec URL (local path by default, ``s3://`` through s3fs).

    ``storage_options`` (credentials, endpoint) are used for I/O only: never logged, never written.
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = normalise_url(url)
        self.storage_options = dict(storage_options or {})
        self._zstore: Any = None

    @classmethod
    def open(cls, url: str, storage_options: Mapping[str, Any] | None = None) -> CubeStore:
        """An existing store (CubeStoreError when there is none at ``url``)."""
        store = cls(url, storage_options)
        if not store._exists(store._path("zarr.json")):
            raise CubeStoreError(
                f"cube store {redact_url(store.url)} does not exist (no zarr.json there): "
                "check the URL, or build the store with `aom cubes`"
            )
        return store

    def __repr__(self) -> str:
        return f"CubeStore({redact_url(self.url)!r})"

    # ------------------------------------------------------------------ plumbing
    @property
    def fs(self) -> Any:
        return filesystem(self.url, self.storage_options)[0]

    @property
    def root(self) -> str:
        return filesystem(self.url, self.storage_options)[1]

    def _path(self, *parts: str) -> str:
        root = self.root
        return posixpath.join(root, *parts) if not is_local(self.url) else join(root, *parts)

    def _exists(self, path: str) -> bool:
        fs = self.fs
        fs.invalidate_cache(path)
        return bool(fs.exists(path))

    def zarr_store(self, subpath: str = "") -> Any:
        """A Zarr store rooted at the cube root (or at ``subpath`` below it)."""

        if subpath:
            return self._make_store(join(self.url, subpath))
        if self._zstore is None:
            self._zstore = self._make_store(self.url)
        return self._zstore

    def _make_store(self, url: str) -> Any:
        import zarr

        if is_local(url):
            return zarr.storage.LocalStore(filesystem(url)[1])
        opts = s3_options(self.storage_options) if url.startswith("s3://") else dict(self.storage_options)
        return zarr.storage.FsspecStore.from_url(url, storage_options=opts)

    # ------------------------------------------------------------------ root
    def root_attrs(self) -> dict[str, Any]:
        import zarr

        group = zarr.open_group(self.zarr_store(), mode="r", zarr_format=3)
        meta = group.attrs.get(ROOT_ATTR)
        return dict(meta) if isinstance(meta, Mapping) else {}

    def ensure_root(self, spec: CubeSpec) -> None:
        """Create the root group (first run) or check that it was built with the same layout."""
        import zarr

        from pipelines.outputs import OutputKind, claim_output

        meta = {"layout_version": LAYOUT_VERSION, "spec": spec.layout_dict(), "fingerprint": spec.fingerprint}
        if not self._exists(self._path("zarr.json")):  # a new store: never inside a user's folder
            claim_output(self.url, OutputKind.CUBES, storage_options=self.storage_options)
        if self._exists(self._path("zarr.json")):
            have = self.root_attrs()
            if not have:
                raise CubeStoreError(f"{redact_url(self.url)} is a Zarr store but not an AOM cube store")
            if have.get("layout_version") != LAYOUT_VERSION:
                old = have.get("layout_version")
                what = " (every GSD group's pixel lattice through the tile origin)" if old == 1 else ""
                raise CubeStoreError(
                    f"cube store {redact_url(self.url)} has cube layout {old}{what}; this version writes layout "
                    f"{LAYOUT_VERSION} (lattices on the sensors' native pixel grids): write to a new --out "
                    "(the old store stays readable)"
                )
            if have.get("fingerprint") != spec.fingerprint:
                raise CubeStoreError(
                    f"cube store {redact_url(self.url)} was built with a different spec "
                    f"({json.dumps(have.get('spec'), sort_keys=True)}); this run asks for "
                    f"{json.dumps(spec.layout_dict(), sort_keys=True)}: write to a new --out"
                )
            return
        zarr.open_group(self.zarr_store(), mode="a", zarr_format=3, attributes={ROOT_ATTR: json_safe(meta)})

    # ------------------------------------------------------------------ records
    def _record_path(self, tile_id: str) -> str:
        return self._path(RECORDS_DIR, f"{tile_id}.json")

    def has_record(self, tile_id: str) -> bool:
        return self._exists(self._record_path(tile_id))

    def record(self, tile_id: str) -> dict[str, Any]:
        """The completion record of a tile (CubeStoreError when the tile is not complete)."""
        path = self._record_path(tile_id)
        fs = self.fs
        try:
            with fs.open(path, "rb") as fh:
                return dict(json.loads(fh.read()))
        except FileNotFoundError:
            raise CubeStoreError(
                f"tile {tile_id} is not complete in {redact_url(self.url)} (no record)"
            ) from None

    def recorded_tiles(self, among: Iterable[str] | None = None) -> list[str]:
        """Ids of tiles with a completion record, any status (listings, no record reads).

        ``among``: only those tiles, found with one listing request per ``<epsg>_<ix>_`` column of
        them instead of a listing of every record of the store."""
        return sorted(self.record_times(among))

    def record_times(
        self, among: Iterable[str] | None = None, whole_columns: bool = False
    ) -> dict[str, float]:
        """Tile id -> modification time of its record (POSIX s), from the same listings (with
        ``whole_columns``: of every record they found, e.g. ``among``'s neighbours in its columns)."""
        wanted = set(among) if among is not None else None
        names = list_files(
            join(self.url, RECORDS_DIR),
            self.storage_options,
            column_prefixes(wanted, limit=MAX_PREFIX_LISTINGS) if wanted is not None else None,
        )
        ids = {n[: -len(".json")]: m for n, m in names.items() if n.endswith(".json")}
        return ids if wanted is None or whole_columns else {t: m for t, m in ids.items() if t in wanted}

    def records(self, tile_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Completion records of many tiles, read concurrently (one GET each); tiles without a record
        are left out, an unreadable record raises CubeStoreError."""
        urls = {join(self.url, RECORDS_DIR, f"{t}.json"): t for t in tile_ids}
        out: dict[str, dict[str, Any]] = {}
        for url, data in read_many(list(urls), self.storage_options).items():
            if data is None:
                continue
            try:
                out[urls[url]] = dict(json.loads(data))
            except (TypeError, ValueError) as e:
                raise CubeStoreError(f"{self}: unreadable completion record {urls[url]}.json: {e}") from e
        return out

    def group_keys(self) -> set[tuple[str, str]] | None:
        """Every ``(collection, gsd_label)`` group the store's spec can hold (from the root attrs and
        the registry); ``None`` when the spec cannot be rebuilt here to the same fingerprint (e.g. the
        store was built with extra registry files)."""
        meta = self.root_attrs()
        d = meta.get("spec") or {}
        try:
            spec = CubeSpec(
                grid=TileGrid(float(d["grid"]["tile_size_m"])),
                collections=tuple(d["collections"]),
                catalog=d["catalog"],
                encoding=d["encoding"],
                chunk_px=int(d["chunk_px"]),
                shard_px=int(d["shard_px"]),
                resampling=d["resampling"],
            )
            if spec.fingerprint != meta.get("fingerprint"):
                return None
            return {(c, label) for c in spec.collections for label in spec.band_groups(c)}
        except Exception:  # a spec this code cannot rebuild: the caller reads every record instead
            return None

    def tile_records(self) -> dict[str, dict[str, Any]]:
        """tile_id -> completion record, for every recorded tile; CubeStoreError names a record that
        cannot be read or has no valid status (``complete`` or ``empty``)."""
        fs = self.fs
        out: dict[str, dict[str, Any]] = {}
        for tile_id in self.recorded_tiles():
            try:
                with fs.open(self._record_path(tile_id), "rb") as fh:
                    rec = json.loads(fh.read())
            except (OSError, ValueError) as e:
                raise CubeStoreError(f"{self}: unreadable completion record {tile_id}.json: {e}") from e
            if not isinstance(rec, dict) or rec.get("status") not in (TileStatus.COMPLETE, TileStatus.EMPTY):
                raise CubeStoreError(
                    f"{self}: completion record {tile_id}.json has no valid status "
                    f"(expected 'complete' or 'empty'): {rec!r}"
                )
            out[tile_id] = rec
        return out

    def complete_tiles(self, include_empty: bool = False) -> list[str]:
        """Ids of tiles whose record says ``complete`` (they hold data); ``include_empty`` adds the
        tiles recorded ``empty`` (built, nothing usable: all cloud, no items, ...)."""
        if include_empty:
            return self.recorded_tiles()
        return [t for t, r in self.tile_records().items() if r["status"] == TileStatus.COMPLETE]

    def empty_tiles(self) -> list[str]:
        """Ids of tiles recorded ``empty``."""
        return [t for t, r in self.tile_records().items() if r["status"] == TileStatus.EMPTY]

    def write_record(self, tile_id: str, record: Mapping[str, Any]) -> None:
        path = join(self.url, RECORDS_DIR, f"{tile_id}.json")
        write_json_atomic(path, json_safe(dict(record)), self.storage_options)

    def remove_record(self, tile_id: str) -> None:
        """Make a tile incomplete before rebuilding it (the caller holds its lease)."""
        self.fs.rm(self._record_path(tile_id))

    def tile_lease(self, tile_id: str, ttl_s: float = LEASE_TTL_S) -> Lease:
        """The writer lease of one tile (``<store>/_leases/<tile_id>.json``): whoever holds it is
        the only run that may clear, write or record that tile."""
        return Lease(join(self.url, LEASES_DIR, f"{tile_id}.json"), self.storage_options, ttl_s=ttl_s)

    # ------------------------------------------------------------------ tile data
    def clear_tile(self, tile_id: str) -> None:
        """Delete whatever a previous, interrupted write left of a tile (its record must not exist;
        the caller holds the tile's lease, so no live run is writing it)."""
        path = self._path(tile_id)
        if self._exists(path):
            self.fs.rm(path, recursive=True)
            self.fs.invalidate_cache(path)

    def delete_group(self, tile_id: str, collection: str, gsd_label: str) -> None:
        path = self._path(group_path(tile_id, collection, gsd_label))
        if self._exists(path):
            self.fs.rm(path, recursive=True)
            self.fs.invalidate_cache(path)

    def write_group(
        self, tile_id: str, ds: xr.Dataset, *, spec: CubeSpec, scheduler: str | None = "threads"
    ) -> list[float]:
        """Write one (collection, GSD) dataset of a tile; returns its per-time valid fractions.

        Metadata and coordinates go out in one concurrent batch (one event-loop round trip, which
        matters on object storage); reflectance is computed and stored shard by shard (each dask
        chunk is exactly one shard, so no two tasks touch the same object)."""
        import dask
        import dask.array as da
        import zarr
        from zarr.core.sync import sync

        path = group_path(tile_id, str(ds.attrs["collection"]), str(ds.attrs["gsd_label"]))
        specs = zarr_variables(ds, spec)
        attrs = json_safe({**ds.attrs, **dataset_convention_attrs(ds)})  # + proj:/spatial: (GDAL, GeoZarr)
        arrays = sync(_create_nodes(self.zarr_store(), path, attrs, specs))
        refl: Any = zarr.Array(arrays["reflectance"])
        store_task = da.store(ds["reflectance"].data, refl, lock=False, compute=False)
        _, fractions = dask.compute(store_task, ds["valid_fraction"].data, scheduler=scheduler)
        values = np.asarray(fractions, dtype=np.float32).ravel()
        zarr.Array(arrays["valid_fraction"])[:] = values
        return [float(v) for v in values]

    # ------------------------------------------------------------------ reading
    def groups(self, tile_id: str) -> list[tuple[str, str]]:
        """(collection, gsd_label) of every group a recorded tile holds (none for an empty tile)."""
        rec = self.record(tile_id)
        return [(str(g["collection"]), str(g["gsd_label"])) for g in rec.get("groups", [])]

    def open_group(
        self,
        tile_id: str,
        collection: str,
        gsd_label: str,
        *,
        decode: bool = True,
        chunks: Any = None,
        lazy: bool = False,
    ) -> xr.Dataset:
        """One group of a complete tile. ``decode``: float32 reflectance with NaN (else the stored ints).

        ``lazy``: no dask; the Dataset is lazily indexed, so a slice reads only the chunks under it
        (chip and window readers: :func:`~pipelines.cubes.groups.read_window`). Reflectance is then
        decoded by xarray on read (a float with NaN) and cast to float32 by the reader."""
        if (collection, gsd_label) not in self.groups(tile_id):
            raise CubeStoreError(f"tile {tile_id} has no group {collection}/{gsd_label}")
        # the group's zarr.json carries consolidated metadata: one GET opens it (xarray looks for
        # consolidated metadata at the store root, so the store is rooted at the group)
        import zarr

        try:
            ds = xr.open_zarr(
                self.zarr_store(group_path(tile_id, collection, gsd_label)),
                consolidated=True,
                zarr_format=3,
                mask_and_scale=decode,
                chunks=None if lazy else ({} if chunks is None else chunks),
            )
        except (
            FileNotFoundError,
            KeyError,
            zarr.errors.GroupNotFoundError,
            zarr.errors.NodeTypeValidationError,
        ):
            raise CubeStoreError(
                f"{self}: tile {tile_id} is recorded complete but its group {collection}/{gsd_label} is "
                f"missing (the store was damaged): delete {RECORDS_DIR}/{tile_id}.json and rerun the cube "
                "build to rebuild the tile"
            ) from None
        if decode and not lazy:  # astype would read the whole array of a lazily indexed Dataset
            ds["reflectance"] = ds["reflectance"].astype(np.float32)
        return ds

    def open_tile(self, tile_id: str, *, decode: bool = True) -> dict[tuple[str, str], xr.Dataset]:
        """All groups of a complete tile, keyed ``(collection, gsd_label)``; ``{}`` for an empty tile."""
        if not self.has_record(tile_id):
            raise CubeStoreError(
                f"{self}: tile {tile_id!r} has no 'complete' record; it cannot be read "
                "(never built, or its build was interrupted: run the cube build again)"
            )
        return {key: self.open_group(tile_id, *key, decode=decode) for key in self.groups(tile_id)}

    def group_meta(self, tile_id: str, collection: str, gsd_label: str, ds: Any) -> GroupMeta:
        """The validated metadata of a group opened with :meth:`open_group` (CubeDataError naming
        what is wrong)."""
        return group_meta(tile_id, collection, gsd_label, ds, where=f"{self!r}: ")

    @staticmethod
    def read_window(ds: Any, t: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """[C, h, w] float32 reflectance of acquisition ``t`` of a group (NaN = missing)."""
        return read_window(ds, t, y0, x0, h, w)

    def open_raw(self, tile_id: str, collection: str, gsd_label: str) -> RawGroup:
        """A group's reflectance read shard by shard in its stored dtype, only the bands asked for
        (:class:`~pipelines.cubes.shards.RawGroup`; one GET for its metadata, one per shard read).
        The tile must be recorded (callers list groups from its record)."""
        gpath = group_path(tile_id, collection, gsd_label)
        zarr_array = functools.partial(_zarr_reflectance, self.url, self.storage_options, gpath)
        return open_raw_group(self.fs, self._path(gpath), zarr_array)


def _zarr_reflectance(url: str, storage_options: Mapping[str, Any], gpath: str) -> Any:
    """The reflectance zarr array of a group (the generic path, for layouts other than ``aom cubes``')."""
    import zarr

    store = CubeStore(url, storage_options).zarr_store(gpath)
    return zarr.open_array(store, path="reflectance", mode="r", zarr_format=3)


# ---------------------------------------------------------------------------------------------
# Zarr encoding of a cube dataset (what xarray's to_zarr would write, in one batch)


def zarr_variables(ds: xr.Dataset, spec: CubeSpec) -> list[dict[str, Any]]:
    """One entry per variable: name, dims, dtype, shape, chunks, shards, fill_value, attributes, data.

    ``data`` is a numpy array to write now, or None for variables computed later (reflectance,
    valid_fraction). The encoding follows xarray's CF conventions so ``xr.open_zarr`` decodes it:
    times as int64 microseconds since 1970 with ``units``/``calendar``; strings as Zarr ``string``;
    non-dimension coordinates listed in the data variable's ``coordinates`` attribute.
    """
    from xarray.coding.times import encode_cf_datetime
    from zarr.codecs import BloscCodec

    out: list[dict[str, Any]] = []
    non_dim = sorted(str(n) for n in ds.coords if n not in ds.dims)
    for name, var in ds.variables.items():
        name = str(name)
        attrs = dict(var.attrs)
        entry: dict[str, Any] = {"name": name, "dims": [str(d) for d in var.dims], "shape": tuple(var.shape)}
        if name == "reflectance":
            chunks = tuple(ds.encoding.get("aom_chunks") or (1, 1, spec.chunk_px, spec.chunk_px))
            shards = tuple(ds.encoding.get("aom_shards") or chunks)
            attrs["coordinates"] = " ".join(non_dim)
            entry.update(
                dtype=var.dtype,
                chunks=chunks,
                shards=shards,
                fill_value=INT16_FILL if spec.encoding == "int16" else np.nan,
                compressors=[BloscCodec(cname="zstd", clevel=spec.zstd_level, shuffle="shuffle")],
                data=None,
            )
        elif name == "valid_fraction":
            entry.update(
                dtype=np.dtype("float32"), chunks=(max(1, var.shape[0]),), fill_value=np.nan, data=None
            )
        elif np.issubdtype(var.dtype, np.datetime64):
            values, units, calendar = encode_cf_datetime(
                var.values,
                units="microseconds since 1970-01-01T00:00:00",
                calendar="proleptic_gregorian",
                dtype=np.dtype("int64"),
            )
            attrs.update(units=units, calendar=calendar)
            entry.update(dtype=np.dtype("int64"), fill_value=0, data=np.asarray(values, dtype=np.int64))
        elif var.dtype == object or var.dtype.kind in ("U", "T"):
            entry.update(dtype=str, fill_value="", data=np.asarray(var.values, dtype=object))
        else:
            values = np.asarray(var.values)
            entry.update(
                dtype=values.dtype, fill_value=np.nan if values.dtype.kind == "f" else 0, data=values
            )
        entry.setdefault("chunks", tuple(max(1, n) for n in var.shape))
        entry.setdefault("shards", None)
        entry.setdefault("compressors", "auto")
        entry["attributes"] = json_safe(attrs)
        out.append(entry)
    return out


async def _create_nodes(
    store: Any, path: str, group_attrs: dict[str, Any], specs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Create the group and its arrays (with their eager data) and return name -> AsyncArray on ``store``.

    Everything is built in a MemoryStore first (zarr's existence checks cost nothing there) and then
    copied to ``store`` with one concurrent PUT per object, so a group costs ~30 small PUTs and no
    HEAD/LIST round trips on object storage. The root ``zarr.json`` is never written here: the
    caller owns a freshly cleared tile prefix, and parent group documents are rewritten identically.
    """
    import asyncio

    import zarr.api.asynchronous as za
    from zarr.core.array import AsyncArray
    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import MemoryStore, StorePath

    mem = MemoryStore()
    group = await za.open_group(store=mem, path=path, mode="w", zarr_format=3, attributes=group_attrs)

    async def one(s: dict[str, Any]) -> tuple[str, Any]:
        arr = await group.create_array(
            name=s["name"],
            shape=s["shape"],
            dtype=s["dtype"],
            chunks=s["chunks"],
            shards=s["shards"],
            fill_value=s["fill_value"],
            compressors=s["compressors"],
            attributes=s["attributes"],
            dimension_names=s["dims"] or None,
            overwrite=True,
        )
        if s["data"] is not None:
            await arr.setitem(..., s["data"])
        return s["name"], arr

    created = dict(await asyncio.gather(*(one(s) for s in specs)))
    # consolidated metadata is a zarr-python extension for v3 (readers without it simply ignore the
    # extra field): one GET opens a group instead of one per array. Its warning is filtered once at
    # import (pipelines.outputs.consolidated), not here: catch_warnings around an await is not thread-safe.
    await za.consolidate_metadata(mem, path=path, zarr_format=3)
    proto = default_buffer_prototype()
    keys = [k async for k in mem.list() if k != "zarr.json"]

    async def copy(key: str) -> None:
        buf = await mem.get(key, prototype=proto)
        assert buf is not None
        await store.set(key, buf)

    await asyncio.gather(*(copy(k) for k in keys))
    return {
        name: AsyncArray(metadata=arr.metadata, store_path=StorePath(store, f"{path}/{name}"))
        for name, arr in created.items()
    }

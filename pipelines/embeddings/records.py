"""Per-tile writes and completion records: a tile is done only when its record exists.

``write_tile`` writes the tile's region of the zone arrays (aligned to whole shards, so the write is atomic per
shard) and then its completion record; readers trust only recorded tiles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.outputs import Lease
    from pipelines.tiling import Tile

import json
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines import storage
from pipelines.embeddings.format import FORMAT_VERSION, LEASES_DIR, TILES_DIR, EmbeddingsStoreError
from pipelines.embeddings.grid import ZoneGrid, check_epsg
from pipelines.embeddings.quantize import encode, error_bound, quantisation_error, unit
from pipelines.embeddings.store import _open_group, band_first, ensure_zone, read_version
from pipelines.retry import RetryPolicy, call_with_retry, is_transient
from pipelines.runs import TileStatus

# ------------------------------------------------------------------------------------------
# Tile writes and completion records


def record_url(root_url: str, version_name: str, tile_id: str, time_index: int) -> str:
    return storage.join(
        storage.normalise_url(root_url), TILES_DIR, version_name, f"t{int(time_index)}", f"{tile_id}.json"
    )


TILE_LEASE_PREFIX = "tile@"
"""Names of the per-tile writer leases in ``<root>/_leases/``: ``tile@<version>@t<time_index>@<tile_id>.json``."""


def tile_lease(
    root_url: str,
    version_name: str,
    tile_id: str,
    time_index: int,
    storage_options: Mapping[str, Any] | None = None,
    worker: str = "",
) -> Lease:
    """The writer lease of one tile at one time (``<root>/_leases/tile@<version>@t<i>@<tile_id>.json``):
    whoever holds it is the one run that reads the tile's pixels and writes its shard, pooled chunk
    and record (:mod:`pipelines.embed.claims`, :func:`pipelines.embed.tasks.embed_padded`). One flat folder with the store's other leases, where
    ``--overwrite`` looks for live writers (:func:`pipelines.outputs.lease_folder.live_leases`). ``worker``:
    the Dask worker that takes it (:attr:`pipelines.outputs.LeaseInfo.worker`)."""
    from pipelines.outputs import Lease

    name = f"{TILE_LEASE_PREFIX}{version_name}@t{int(time_index)}@{tile_id}.json"
    url = storage.join(storage.normalise_url(root_url), LEASES_DIR, name)
    return Lease(url, storage_options, worker=worker)


def remove_abandoned_tile_leases(root_url: str, storage_options: Mapping[str, Any] | None = None) -> int:
    """Remove the tile leases of runs that are gone (a run killed between a tile's record and the
    lease's release leaves it; the next run skips that tile and never touches its lease). Each is
    taken over as any writer would (:meth:`~pipelines.outputs.Lease.try_acquire`: only while still
    abandoned, never one a live run holds or has just taken over) and released. One listing of
    ``_leases/``; returns how many went."""
    from pipelines.outputs import LeaseHeldError
    from pipelines.outputs.lease_folder import folder_leases

    folder = storage.join(storage.normalise_url(root_url), LEASES_DIR)
    removed = 0
    for lease in folder_leases(folder, storage_options, prefix=TILE_LEASE_PREFIX):
        info = lease.read()
        if info is None or not info.abandoned():
            continue
        try:
            if lease.try_acquire() is None:
                lease.release()
                removed += 1
        except LeaseHeldError:  # it changed hands meanwhile: a live run has it
            continue
    return removed


def tile_is_complete(
    root_url: str,
    version_name: str,
    tile_id: str,
    time_index: int,
    storage_options: Mapping[str, Any] | None = None,
) -> bool:
    """True once the tile's completion record exists (status ``complete`` or ``nodata``); False when
    it has none. A record that cannot be read raises (see :func:`read_record`): the caller reports
    the tile failed, never "not done" (that encoded and wrote it again)."""
    rec = read_record(record_url(root_url, version_name, tile_id, time_index), storage_options)
    if rec is None:
        return False
    return rec.get("status") in (TileStatus.COMPLETE, TileStatus.NODATA) and rec.get("time_index") == int(
        time_index
    )


#: Of :func:`read_record`: attempts of a record's read that fails transiently (503 SlowDown, a reset
#: connection: :func:`pipelines.retry.is_transient`).
RECORD_READ_RETRY = RetryPolicy(max_attempts=4, initial_delay_s=0.5, max_delay_s=5.0, max_elapsed_s=20.0)


def read_record(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The completion record at ``url`` (one GET, no existence check: s3fs may answer that from a
    stale listing cache); None only when there is none (404, ``FileNotFoundError``). Any other
    failure raises, after :data:`RECORD_READ_RETRY` for a transient one: a refused access (403,
    ``PermissionError``) is a failure, never "no record"; a record that is not a JSON object raises
    :class:`EmbeddingsStoreError`."""

    def get() -> Any:
        try:
            return storage.read_json(url, storage_options)
        except FileNotFoundError:
            return None

    try:
        rec = call_with_retry(
            get,
            policy=RECORD_READ_RETRY,
            is_retryable=is_transient,
            describe=f"GET {storage.redact_url(url)}",
        )
    except ValueError as exc:  # not JSON (an OSError is not a ValueError: it propagates as it is)
        raise EmbeddingsStoreError(
            f"unreadable completion record {storage.redact_url(url)} ({exc}): delete it to embed the tile again"
        ) from exc
    if rec is not None and not isinstance(rec, dict):
        raise EmbeddingsStoreError(
            f"completion record {storage.redact_url(url)} is not a JSON object: delete it to embed the tile again"
        )
    return rec


def list_complete_tiles(
    root_url: str,
    version_name: str,
    time_index: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    tile_ids: Iterable[str] | None = None,
) -> dict[int, list[str]]:
    """``{time_index: [tile_id, ...]}`` from the record names alone (listings, no reads).

    Includes ``nodata`` tiles (their shards are absent and read as nodata). ``tile_ids``: only those
    tiles, found with one listing per ``<epsg>_<ix>_`` column of them rather than a listing of the
    whole version (see :func:`record_times`).
    """
    times = record_times(root_url, version_name, time_index, storage_options, tile_ids)
    return {ti: sorted(found) for ti, found in times.items() if found}


def record_times(
    root_url: str,
    version_name: str,
    time_index: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    tile_ids: Iterable[str] | None = None,
) -> dict[int, dict[str, float]]:
    """``{time_index: {tile_id: record modification time}}`` of the recorded tiles (listings only).

    Without ``tile_ids`` every record of the version is listed (a paged listing per time slice); with
    them, one listing request per ``<epsg>_<ix>_`` prefix of those tiles and time slice, so a run
    pays for the tiles it touches, not for the size of the store.
    """
    from pipelines.tiling import column_prefixes

    base = storage.join(storage.normalise_url(root_url), TILES_DIR, version_name)
    wanted = set(tile_ids) if tile_ids is not None else None
    prefixes = column_prefixes(wanted, limit=storage.MAX_PREFIX_LISTINGS) if wanted is not None else None
    if time_index is not None:
        subdirs = [int(time_index)]
    else:  # the time slices that have records: one listing of the version's folder
        fs, path = storage.filesystem(base, storage_options)
        try:
            dirs = [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=False, refresh=True)]
        except FileNotFoundError:
            return {}
        subdirs = sorted(int(n[1:]) for n in dirs if re.fullmatch(r"t\d+", n))
    out: dict[int, dict[str, float]] = {}
    for ti in subdirs:
        names = storage.list_files(storage.join(base, f"t{ti}"), storage_options, prefixes)
        found = {n[: -len(".json")]: m for n, m in names.items() if n.endswith(".json")}
        if wanted is not None:
            found = {t: m for t, m in found.items() if t in wanted}
        if found:
            out[ti] = found
    return out


def read_tile_records(
    root_url: str,
    version_name: str,
    keys: Iterable[tuple[str, int]],
    storage_options: Mapping[str, Any] | None = None,
) -> dict[tuple[str, int], dict[str, Any]]:
    """The completion records of many ``(tile_id, time_index)`` read concurrently (one GET each);
    keys without a record are left out, any other failure raises."""
    urls = {record_url(root_url, version_name, t, ti): (t, int(ti)) for t, ti in keys}
    got = storage.read_many(list(urls), storage_options)
    return {urls[u]: dict(json.loads(b)) for u, b in got.items() if b is not None}


#: Of the catalog freshness check (:func:`pipelines.embed.freshness.find_stale_catalog`): per
#: recorded tile and time index, its record's modification time and a digest of the items (ids and
#: versions) of a search the record was read and found fresh against, so a rerun whose search gives
#: a tile the same items reads no record. Format 2: the digest covers versions (format 1's, ids
#: only, is ignored: an index of that format is rebuilt by the next check).
CONSIDERED_INDEX = "_considered.json"
CONSIDERED_INDEX_FORMAT = 2


def considered_index_url(root_url: str, version_name: str) -> str:
    return storage.join(storage.normalise_url(root_url), TILES_DIR, version_name, CONSIDERED_INDEX)


def read_considered_index(
    root_url: str, version_name: str, storage_options: Mapping[str, Any] | None = None
) -> dict[str, tuple[float, str]]:
    """``{"<time_index>/<tile_id>": (record modification time, digest)}``; empty when there is none
    or it cannot be parsed (it is a cache: its entries count only where the record's listed time
    equals theirs). An access failure raises."""
    try:
        doc = storage.read_json(considered_index_url(root_url, version_name), storage_options)
    except (FileNotFoundError, ValueError):  # none yet, or not JSON: rebuilt by the next check
        return {}
    if not isinstance(doc, dict) or doc.get("format") != CONSIDERED_INDEX_FORMAT:
        return {}
    try:
        return {str(k): (float(v[0]), str(v[1])) for k, v in doc["entries"].items()}
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):  # malformed: as if none
        return {}


def write_considered_index(
    root_url: str,
    version_name: str,
    entries: Mapping[str, tuple[float, str]],
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Replace the index in one atomic write (concurrent runs: the last one wins, which is safe since
    an entry counts only while its record keeps the modification time it was made from)."""
    doc = {"format": CONSIDERED_INDEX_FORMAT, "entries": {k: [m, d] for k, (m, d) in sorted(entries.items())}}
    storage.write_json_atomic(considered_index_url(root_url, version_name), doc, storage_options)


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
    before_record: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Write one tile at one time: its shard of ``embeddings``, its ``pooled`` chunk, then the record.

    ``embeddings`` is ``[h, w, dim]`` float32 on the tile's token grid, **north-up** (row 0 = the
    tile's northern edge, column 0 = western edge), ``h == w == tile_size_m / token_ground_m``;
    a token with any NaN component is nodata. ``pooled`` (``[dim]``) defaults to the normalised
    mean of the tile's valid unit vectors. ``provenance`` must hold ``input_items`` (list of STAC
    item ids) and ``bands`` (list of ``{"name", "gsd_m", ...}``); the model identity comes from
    the version. Re-writing a tile is allowed (same shard, same record name: last write wins); a
    writer that may race another run holds the tile's lease (:func:`tile_lease`) and passes
    ``before_record`` (its ``Lease.check``): called after the data, before the record, it raises to
    leave the tile unrecorded. Returns the completion record.
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
    prov = storage.redact_record(json.loads(storage.json_dumps(provenance)))  # strict JSON now; no credential
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
    pooled_arr = group["pooled"]
    assert isinstance(pooled_arr, zarr.Array)
    if band_first(emb_arr):  # format 2: (time, dim, y, x)
        emb_arr[ti : ti + 1, :, row0:row1, col0:col1] = q.transpose(2, 0, 1)[None]
        pooled_arr[ti, :, trow, tcol] = pooled_vec.astype(np.float16)
    else:  # format 1: (time, y, x, dim)
        emb_arr[ti : ti + 1, row0:row1, col0:col1, :] = q[None]
        pooled_arr[ti, trow, tcol, :] = pooled_vec.astype(np.float16)

    stats = quantisation_error(emb[valid], version.quantisation) if n_valid else quantisation_error(emb[:0])
    record = {
        "format": FORMAT_VERSION,
        "version": version_name,
        "tile_id": tile.tile_id,
        "epsg": epsg,
        "bounds": list(bounds),
        "time_index": int(time_index),
        "time": version.times[int(time_index)],
        "status": str(TileStatus.COMPLETE if n_valid else TileStatus.NODATA),
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
        "quantisation": {
            "method": version.quantisation,
            "bound_max_abs_error": error_bound(version.quantisation),
            **stats,
        },
    }
    if before_record is not None:
        before_record()
    storage.write_json_atomic(
        record_url(root_url, version_name, tile.tile_id, int(time_index)), record, storage_options
    )
    return record

"""Batched listings and reads: bookkeeping (completion records, STAC items) costs requests in
proportion to the tiles a run touches, not to the size of the store."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec

from pipelines.storage.files import is_temp_name, one_get, write_json_atomic
from pipelines.storage.urls import filesystem, is_local, normalise_url

#: Above this many name prefixes, one listing of the whole folder is cheaper than one per prefix.
MAX_PREFIX_LISTINGS = 256

#: Concurrent requests of :func:`list_files`, :func:`read_many` and :func:`write_json_many`.
IO_CONCURRENCY = 32


def list_files(
    folder_url: str,
    storage_options: Mapping[str, Any] | None = None,
    prefixes: Sequence[str] | None = None,
) -> dict[str, float]:
    """``{name: modification time (POSIX seconds)}`` of the files directly in a folder.

    ``prefixes``: only names starting with one of them; on an object store that is one listing
    request per prefix (server-side prefix filter, concurrently) instead of listing the whole folder,
    unless there are more than :data:`MAX_PREFIX_LISTINGS` prefixes. Temporary files (:func:`is_temp_name`) are
    left out; a missing folder is empty; any other failure raises (never an empty answer).
    """
    fs, path = filesystem(folder_url, storage_options)
    wanted = tuple(dict.fromkeys(prefixes)) if prefixes is not None else None
    if wanted is not None and not wanted:
        return {}
    _fast_timestamps(fs)
    if is_local(folder_url) or wanted is None or len(wanted) > MAX_PREFIX_LISTINGS:
        fs.invalidate_cache(path)
        try:
            entries = fs.ls(path, detail=True, refresh=True)
        except FileNotFoundError:
            entries = []
    else:
        from concurrent.futures import ThreadPoolExecutor

        def one(prefix: str) -> list[dict[str, Any]]:
            try:  # maxdepth=1 + prefix: one delimiter listing filtered by the server, not from a cache
                found = fs.find(path, maxdepth=1, prefix=prefix, detail=True, refresh=True)
            except FileNotFoundError:
                return []
            return list(found.values())

        with ThreadPoolExecutor(min(IO_CONCURRENCY, len(wanted))) as pool:
            entries = [e for part in pool.map(one, wanted) for e in part]
    out: dict[str, float] = {}
    for e in entries:
        if e.get("type") == "directory":
            continue
        name = posixpath.basename(str(e["name"]).rstrip("/"))
        if is_temp_name(name) or (wanted is not None and not name.startswith(wanted)):
            continue
        out[name] = _mtime(e)
    return out


def _fast_timestamps(fs: fsspec.AbstractFileSystem) -> None:
    """Parse the ``LastModified`` of every key an S3 listing returns with :func:`_iso_timestamp`
    instead of botocore's dateutil parser, which took ~75 % of the client CPU of a listing (profiled
    in ``benchmarks/bench_bookkeeping.py``): set on the parser factory of the filesystem's client."""
    if "s3" not in tuple(fs.protocol) or getattr(fs, "asynchronous", False):
        return
    from fsspec.asyn import sync

    client = sync(fs.loop, fs.set_session)
    factory = getattr(getattr(client, "_endpoint", None), "_response_parser_factory", None)
    if factory is not None and hasattr(factory, "set_parser_defaults"):
        factory.set_parser_defaults(timestamp_parser=_iso_timestamp)


def _iso_timestamp(value: Any) -> Any:
    """botocore's timestamp parser, with a fast path for the ISO 8601 UTC form of S3 listings
    (``2026-01-01T10:00:00.000Z``): the same aware datetime; anything else goes to botocore."""
    if isinstance(value, str) and len(value) >= 20 and value[10] == "T" and value.endswith("Z"):
        from datetime import datetime

        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    from botocore.utils import parse_timestamp

    return parse_timestamp(value)


def modified_time(fs: fsspec.AbstractFileSystem, path: str) -> float:
    """Last modification of one file (POSIX seconds); FileNotFoundError when it is gone."""
    fs.invalidate_cache(path)
    return _mtime(fs.info(path))


def _mtime(entry: Mapping[str, Any]) -> float:
    value = entry.get("LastModified", entry.get("mtime", entry.get("last_modified", 0.0)))
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    try:
        return float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0


def read_many(
    urls: Sequence[str], storage_options: Mapping[str, Any] | None = None
) -> dict[str, bytes | None]:
    """``{url: bytes}`` of many objects of one filesystem read concurrently (one GET each on an
    object store); a missing object maps to ``None``, any other failure raises."""
    out: dict[str, bytes | None] = {}
    if not urls:
        return out
    fs, _ = filesystem(urls[0], storage_options)
    paths = {fs._strip_protocol(normalise_url(u)): u for u in urls}
    if is_local(urls[0]):
        for path, url in paths.items():
            try:
                with open(path, "rb") as fh:
                    out[url] = fh.read()
            except FileNotFoundError:
                out[url] = None
        return out
    from fsspec.asyn import AsyncFileSystem, _run_coros_in_chunks, sync

    got: list[Any]
    if isinstance(fs, AsyncFileSystem):  # one GET each, no existence check first
        coros = [fs._cat_file(p, **one_get(fs)) for p in paths]
        got = sync(fs.loop, _run_coros_in_chunks, coros, batch_size=IO_CONCURRENCY, return_exceptions=True)
    else:
        got = []
        for p in paths:
            try:
                got.append(fs.cat_file(p))
            except Exception as exc:
                got.append(exc)
    for url, value in zip(paths.values(), got, strict=True):
        if isinstance(value, FileNotFoundError):
            out[url] = None
        elif isinstance(value, BaseException):
            raise value
        else:
            out[url] = bytes(value)
    return out


def write_json_many(objects: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None) -> None:
    """:func:`write_json_atomic` for many ``{url: object}`` concurrently (each one atomic). A failed
    write or an interrupt (Ctrl-C, the ``aom`` SIGTERM handler's :class:`~pipelines.errors.Terminated`)
    cancels the writes not started yet and waits only for the running ones (threads are not
    interrupted) before it raises: each object is then either written whole or not at all."""
    from concurrent.futures import ThreadPoolExecutor

    if not objects:
        return
    pool = ThreadPoolExecutor(min(IO_CONCURRENCY, len(objects)))
    try:
        for f in [pool.submit(write_json_atomic, u, o, storage_options) for u, o in objects.items()]:
            f.result()
    finally:  # a pool's exit would start every queued write first
        pool.shutdown(wait=True, cancel_futures=True)

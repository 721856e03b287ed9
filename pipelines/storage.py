"""Storage: any fsspec URL (local path, ``file://``, ``s3://``, ``gs://``, ``az://``).

Credentials come from the standard chains (environment, profiles, instance roles) or from explicit
``storage_options``; they are never logged and never written into metadata: use
:func:`redact_options` / :func:`redact_url` before printing anything that might carry them.
Options typed by a person (``--storage-options`` of every ``aom`` verb, flow parameters) are read
by :func:`parse_storage_options` alone: inline JSON, ``@file.json`` or repeated ``key=value``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import posixpath
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.request import url2pathname

import fsspec
from fsspec.core import url_to_fs

from pipelines.errors import InputError, RunFailedError
from pipelines.redaction import (  # re-exported: storage is where callers look for redaction
    RedactingFilter as RedactingFilter,
)
from pipelines.redaction import install_log_redaction as install_log_redaction
from pipelines.redaction import link_href
from pipelines.redaction import redact_options as redact_options
from pipelines.redaction import redact_record as redact_record
from pipelines.redaction import redact_text as redact_text
from pipelines.redaction import redact_url as redact_url
from pipelines.storage_options import StorageOptionsInput as StorageOptionsInput  # re-exported too
from pipelines.storage_options import check_credentials as check_credentials
from pipelines.storage_options import parse_storage_options as parse_storage_options

log = logging.getLogger(__name__)


def local_href(href: str) -> str:
    """The one place a ``file://`` URI becomes the local path it names, percent-decoded as
    ``Path.as_uri`` encodes (``file:///a%20b/%C3%BC.tif`` and ``file://localhost/a%20b/%C3%BC.tif`` ->
    ``/a b/ü.tif``; fsspec and GDAL would take the ``%20`` literally). Anything else is returned
    unchanged: a plain path is never decoded (``/tmp/50%25`` stays), nor a ``file://`` URI of
    another host or any other URL."""
    if not href.startswith("file://"):
        return href
    host, slash, path = href[len("file://") :].partition("/")
    if host not in ("", "localhost"):
        return href
    return os.path.normpath(url2pathname(slash + path))


def normalise_url(url: str | os.PathLike[str]) -> str:
    """Plain local paths become absolute, ``file://`` URIs the absolute path they name
    (:func:`local_href`); other URLs pass through unchanged."""
    text = local_href(os.fspath(url))
    if "://" in text:
        return text.rstrip("/") if not text.endswith(":///") else text
    return str(Path(text).expanduser().absolute())


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


URL_SCHEMES = ("file", "s3", "gs", "gcs", "az", "abfs", "abfss", "http", "https", "memory")
"""The URL schemes the project reads and writes (besides plain local paths)."""

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def url_scheme(url: str) -> str | None:
    """``"s3"`` for ``s3://b/k``; None for a plain local path."""
    m = _SCHEME.match(str(url))
    return m.group(1).lower() if m else None


def check_url(url: str | None, what: str) -> None:
    """Refuse a URL whose scheme the project does not read or write (one line listing the valid
    ones); ``what`` names the option. None and plain local paths pass."""
    if url is None:
        return
    scheme = url_scheme(str(url))
    if scheme is not None and scheme not in URL_SCHEMES:
        raise InputError(
            f"{what}: unknown URL scheme {scheme}:// in {redact_url(str(url))}; use a local path or one of "
            + ", ".join(f"{s}://" for s in URL_SCHEMES)
        )


def join(url: str, *parts: str) -> str:
    if "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}"
    return os.path.join(url, *parts)


def filesystem(
    url: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path-within-it) for a URL."""
    opts = dict(storage_options or {})
    if url.startswith("s3://"):
        opts = s3_options(opts)
    fs, path = url_to_fs(normalise_url(url), **opts)
    return fs, path


def s3_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise s3fs options: ``endpoint_url`` goes into ``client_kwargs``.

    s3fs with ``region_name='us-east-1'`` fails ``mkdir`` against S3-compatible servers, so an
    explicit endpoint without a region gets ``us-west-2``, which both AWS and moto accept.
    """
    opts = dict(options)
    client_kwargs = dict(opts.pop("client_kwargs", {}) or {})
    if "endpoint_url" in opts:
        client_kwargs.setdefault("endpoint_url", opts.pop("endpoint_url"))
    if "region_name" in opts:
        client_kwargs.setdefault("region_name", opts.pop("region_name"))
    if client_kwargs.get("endpoint_url") and not client_kwargs.get("region_name"):
        client_kwargs["region_name"] = "us-west-2"
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    return opts


def public_uri(url: str | os.PathLike[str]) -> str:
    """``url`` as an absolute URI fit for published metadata (STAC hrefs, Zarr attributes): a local path
    becomes ``file:///abs/path`` (relative paths resolved against the working directory now); a URL with
    a scheme stays as given but for its credentials: no ``user:password@``, no signature parameters,
    other credential parameters masked (:func:`pipelines.redaction.link_href`), so the link still
    opens for a reader who brings their own."""
    text = os.fspath(url)
    if "://" in text:
        return link_href(text)
    return Path(text).expanduser().absolute().as_uri()


_OBJECT_STORES = ("s3://", "gs://", "gcs://", "az://", "abfs://")


# ------------------------------------------------------------------------------------------
# Small atomic-ish primitives. Object stores have atomic single-object PUTs, local files get
# write-to-temp-then-rename; either way a reader never sees a half-written small object.


def write_bytes_atomic(url: str, data: bytes, storage_options: Mapping[str, Any] | None = None) -> None:
    fs, path = filesystem(url, storage_options)
    parent = posixpath.dirname(path) if not is_local(url) else os.path.dirname(path)
    if parent and not url.startswith(_OBJECT_STORES):  # object stores have no folders: no request
        fs.makedirs(parent, exist_ok=True)
    if is_local(url):
        if os.path.isdir(path):
            raise InputError(f"{path} is a folder; give a file name")

        def fill(tmp: str) -> None:
            with open(tmp, "wb") as fh:  # created with the user's umask, as any file they write
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())

        _replace_local(path, fill)
    else:
        fs.pipe_file(path, data)


def _replace_local(path: str, fill: Callable[[str], object]) -> None:
    """``fill(tmp)`` writes the file under a temporary sibling name (:func:`temp_name`; a killed
    writer's leftovers removed first), which is then renamed onto ``path``: a reader sees the old
    file or the whole new one, and a failure leaves no temporary file."""
    clean_stale_temps(path)
    tmp = temp_name(path)
    try:
        fill(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


UPLOAD_PART_BYTES = 8 * 2**20
"""Part size of the multipart uploads of :func:`upload_file_atomic` to S3 (S3's minimum is 5 MiB; raised
for a file of more than 10 000 parts, S3's maximum); a file under two parts goes in one PUT."""

UPLOAD_CONCURRENCY = 4
"""Parts of one upload read from disk and sent at a time. Python holds about two copies of each part
in flight (the part read and the request's), so an upload takes about 2 x 4 x 8 MiB = 64 MiB at most,
whatever the file's size (``benchmarks/bench_upload.py``)."""


UPLOAD_ABORT_S = 10.0
"""Most seconds an interrupted multipart upload of :func:`upload_file_atomic` takes to abort its parts
(what is left then, the bucket's lifecycle rule removes: infra/README.md)."""


def upload_file_atomic(local_path: str, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Upload the finished local file ``local_path`` to ``url`` streaming it from disk, so that ``url``
    holds the whole file or is left as it was, whatever the file's size.

    On S3 (s3fs ``put_file``) a file of at least two :data:`UPLOAD_PART_BYTES` parts is a multipart
    upload, read from disk :data:`UPLOAD_CONCURRENCY` parts at a time (memory: those parts, not the
    file; no 5 GB limit of a single PUT); its object appears only when the upload is completed, and a
    failure of any part or of the completion makes s3fs abort the upload (no object, no parts kept). A
    smaller file is one PUT. An interrupt (KeyboardInterrupt, a SIGTERM handler's SystemExit) stops the
    upload, which would go on in fsspec's IO thread, aborts it (:func:`_put_s3`) and comes out as it
    came. Other object stores publish the object at the end of their own upload
    (gcsfs resumable uploads, adlfs committed block lists). A failure raises
    :class:`~pipelines.errors.RunFailedError` naming the destination (credentials redacted), chained to
    its cause, which :func:`pipelines.retry.is_transient` classifies (a 503, a lost connection).
    A local ``url`` is copied under a temporary sibling name (:func:`temp_name`) renamed into place."""
    fs, path = filesystem(url, storage_options)
    if is_local(url):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        _replace_local(path, lambda tmp: shutil.copyfile(local_path, tmp))
        return
    try:
        if "s3" in tuple(fs.protocol):
            size = os.path.getsize(local_path)
            part = max(UPLOAD_PART_BYTES, 5 * 2**20, -(-size // 10_000))  # S3 takes at most 10 000 parts
            options = {"chunksize": part, "max_concurrency": UPLOAD_CONCURRENCY}
            _put_s3(fs, local_path, path, options, url, size >= min(5 * 2**30, 2 * part))
        else:
            fs.put_file(local_path, path)
    except Exception as exc:
        cause = redact_text(f"{type(exc).__name__}: {exc}".strip().replace("\n", " "))
        raise RunFailedError(f"upload to {redact_url(url)} failed, nothing written there: {cause}") from exc


def _put_s3(fs: Any, local_path: str, path: str, options: dict[str, Any], url: str, multipart: bool) -> None:
    """``fs.put_file`` run on fsspec's IO loop, waited for as fsspec's ``sync`` waits. An interrupt of the
    wait (any exception raised in this thread meanwhile) cancels the upload there, or it never starts.
    A multipart upload, which s3fs aborts on an ``Exception`` only, not on a cancellation, is aborted:
    every upload of exactly this key that S3 lists as in progress, within :data:`UPLOAD_ABORT_S`; a
    failure of that is logged (redacted), and the interrupt goes on as it came. By key, not by upload
    id: s3fs does not tell the id, and one read from S3's answer would miss an upload cancelled while
    S3 created it; not by initiation time either: S3-compatible servers do not all report it (moto
    answers a constant), and it would not tell ours from another writer's begun a moment before. Any
    other upload of the key is a killed writer's (parts that can never complete) or a concurrent
    writer's, which one writer per output (``pipelines.outputs``) rules out."""
    import asyncio
    import concurrent.futures
    import contextlib
    import threading

    from fsspec.asyn import FSTimeoutError

    settled, state = threading.Event(), dict[str, Any]()

    async def put() -> None:
        try:
            if "stopped" not in state:
                state["task"] = asyncio.current_task()
                await fs._put_file(local_path, path, **options)
        except asyncio.CancelledError:
            if multipart:
                try:
                    await asyncio.wait_for(abort(), UPLOAD_ABORT_S)
                except Exception as exc:
                    cause = redact_text(f"{type(exc).__name__}: {exc}".strip().replace("\n", " "))
                    log.warning("upload to %s interrupted, its parts not aborted: %s", redact_url(url), cause)
            raise
        finally:
            settled.set()

    async def abort() -> None:
        bucket, key, _ = fs.split_path(path)  # our key sorts first among those it prefixes: one page
        listed = await fs._call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key)
        for upload in listed.get("Uploads", []):
            if upload.get("Key") == key:
                await fs._abort_mpu(bucket, key, upload["UploadId"])

    def stop() -> None:  # on the loop, as put(): cancels it, or it has not started and never will
        state["stopped"] = True
        if "task" in state:
            state["task"].cancel()
        else:
            settled.set()

    future = asyncio.run_coroutine_threadsafe(put(), fs.loop)
    try:
        while not concurrent.futures.wait((future,), timeout=1.0)[0]:  # an interrupt breaks a timed wait
            pass
    except BaseException:
        fs.loop.call_soon_threadsafe(stop)
        with contextlib.suppress(BaseException):  # a second interrupt ends this wait; the first goes on
            settled.wait(UPLOAD_ABORT_S + 1.0)
        raise
    try:
        future.result()
    except TimeoutError as exc:  # as fsspec's sync does
        raise FSTimeoutError from exc


_TEMP_TAG = ".aom-tmp-"

STALE_FOREIGN_S = 24 * 3600.0
"""A temporary or partial file another machine wrote (a shared disk: NFS, Lustre) counts as left by a
dead writer once it has not been modified for this long; its process cannot be asked."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "localhost"


def writer_tag(pid: int | None = None) -> str:
    """``<pid>@<host>``: who writes a temporary or partial file, so that a later run removes only
    what a dead writer of *this* machine left (a process id means nothing on another machine that
    shares the disk)."""
    return f"{os.getpid() if pid is None else pid}@{_host()}"


def writer_gone(tag: str, path: str) -> bool:
    """Whether the writer named by ``tag`` (:func:`writer_tag`; a bare pid, the names of older
    versions, counts as this machine's) is gone: on this machine its process no longer runs; on
    another, ``path`` has not been modified for :data:`STALE_FOREIGN_S`."""
    pid_text, _, host = tag.partition("@")
    if not pid_text.isdigit():
        return False
    if not host or host == _host():
        return not process_alive(int(pid_text))
    try:
        return time.time() - os.path.getmtime(path) > STALE_FOREIGN_S
    except OSError:
        return False


_TEMP_REST = re.compile(r"(\d+(?:@[A-Za-z0-9_.-]+?)?)-[0-9a-f]{12}(?:\.|$)")  # <tag>-<random>[<suffix>]


def temp_name(path: str, suffix: str = "") -> str:
    """A sibling temporary name for ``path`` (local), tagged with its writer (:func:`writer_tag`)
    so that a later run can tell a dead writer's leftover (:func:`clean_stale_temps`) from a live
    writer's file, on this machine or another one sharing the disk."""
    return f"{path}{_TEMP_TAG}{writer_tag()}-{uuid.uuid4().hex[:12]}{suffix}"


def is_temp_name(name: str) -> bool:
    """A writer's temporary file (:func:`temp_name`, or a ``.tmp-`` sibling), never an output."""
    return _TEMP_TAG in name or ".tmp-" in name


def clean_stale_temps(path: str) -> list[str]:
    """Remove the temporary siblings of ``path`` (local) left by writers that are gone
    (:func:`writer_gone`: a killed run); a live writer's files are kept. Returns what was removed."""
    folder, base = os.path.split(path)
    prefix = base + _TEMP_TAG
    removed: list[str] = []
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        m = _TEMP_REST.match(name[len(prefix) :])
        full = os.path.join(folder, name)
        if not m or not writer_gone(m.group(1), full):
            continue
        try:
            os.remove(full)
            removed.append(full)
        except OSError:
            pass
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine runs (another user's live process counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def write_json_atomic(url: str, obj: Any, storage_options: Mapping[str, Any] | None = None) -> None:
    write_bytes_atomic(url, json_dumps(obj).encode(), storage_options)


def read_json(url: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    fs, path = filesystem(url, storage_options)
    return json.loads(fs.cat_file(path, **one_get(fs)))  # one GET on an object store (no HEAD first)


def one_get(fs: Any) -> dict[str, Any]:
    """``cat_file`` options for a single GET (s3fs otherwise asks for the size first, to split big reads)."""
    import inspect

    cat = getattr(fs, "_cat_file", None)
    if cat is not None and "max_concurrency" in inspect.signature(cat).parameters:
        return {"max_concurrency": 1}
    return {}


# ------------------------------------------------------------------------------------------
# Batched listings and reads: bookkeeping (completion records, STAC items) costs requests in
# proportion to the tiles a run touches, not to the size of the store.

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
    """:func:`write_json_atomic` for many ``{url: object}`` concurrently (each one atomic)."""
    from concurrent.futures import ThreadPoolExecutor

    if not objects:
        return
    with ThreadPoolExecutor(min(IO_CONCURRENCY, len(objects))) as pool:
        for f in [pool.submit(write_json_atomic, u, o, storage_options) for u, o in objects.items()]:
            f.result()


def exists(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return bool(fs.exists(path))


def json_safe(value: Any) -> Any:
    """A copy of attrs/metadata with NaN/inf replaced by None and numpy scalars made plain (what
    :func:`json_dumps` and Zarr attributes can hold: zarr-python would write a bare ``NaN``)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_dumps(obj: Any) -> str:
    """Strict JSON (NaN/Infinity rejected: they are not JSON and break other readers)."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, default=_json_default)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def content_hash(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()

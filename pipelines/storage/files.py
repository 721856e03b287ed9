"""Small atomic writes and reads (bytes, JSON), the temporary names of local writers (tagged with
who writes them, so a later run removes only a dead writer's leftovers) and strict JSON."""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import re
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipelines.errors import InputError
from pipelines.storage.urls import filesystem, is_local

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

"""The object-store side of a lease (:class:`pipelines.outputs.lease.Lease`): conditional writes.

On S3 (and stores that speak its conditions) every change of a lease object is conditional, so of two
runs that change it at once one wins and the other learns it lost:

- **Create** (:func:`create`): a PUT with ``If-None-Match: *`` (s3fs ``mode="create"``), refused
  when an object exists.
- **Replace** (:func:`replace`: a take-over, a hand-over, a renewal): a PUT with ``If-Match`` the
  ETag the caller judged, refused once another run changed the object.
- **Delete** (:func:`delete`): a DELETE with ``If-Match`` the ETag of the lease the holder last
  wrote; a store that answers 501 to it, or has no ETags, gets a plain DELETE.

What a lease *says* (owner, heartbeat) is read and judged by the caller; this module sees bytes and
ETags.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pipelines import storage
from pipelines.retry import http_status

log = logging.getLogger(__name__)


def etag_of(response: Any) -> str | None:
    """The ETag in a PUT's ``response``, if it names one."""
    if isinstance(response, Mapping):
        tag = response.get("ETag")
        return str(tag) if tag else None
    return None


def current_etag(fs: Any, path: str) -> str | None:
    """The ETag of the object at ``path`` now (None when there is none)."""
    fs.invalidate_cache(path)
    try:
        return str(fs.info(path).get("ETag") or "") or None
    except FileNotFoundError:
        return None


def create(fs: Any, path: str, data: bytes) -> tuple[bool, str | None]:
    """PUT ``data`` at ``path`` only if no object is there: (created, the new object's ETag)."""
    try:
        out = fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False, None
    return True, etag_of(out) or current_etag(fs, path)


def replace(fs: Any, path: str, data: bytes, etag: str) -> tuple[bool, str | None]:
    """PUT ``data`` at ``path`` only while the object there is still ``etag``: (replaced, the new
    object's ETag); (False, None) when the store refused it (any ``OSError``)."""
    try:
        out = fs.pipe_file(path, data, IfMatch=etag)
    except OSError:
        return False, None
    return True, etag_of(out) or current_etag(fs, path)


def delete(fs: Any, path: str, etag: str | None, url: str) -> None:
    """Delete the lease object at ``path`` only while it is still ``etag`` (``url``: for the log)."""
    if etag is None or not hasattr(fs, "call_s3"):  # no ETags, or not S3: as before
        fs.rm_file(path)
        return
    bucket, key, _ = fs.split_path(path)
    try:
        fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
    except FileNotFoundError:
        pass
    except OSError as exc:
        status = http_status(exc)
        if status == 501:  # no conditional deletes on this store
            fs.rm_file(path)
        elif status == 412:
            log.info("lease %s changed hands before its release: kept", storage.redact_url(url))
        else:
            raise
    finally:
        fs.invalidate_cache(path)

"""The leases of a folder (``<store>/_leases``): which there are, which other live runs hold.

One listing of the folder, by name (:func:`folder_leases`); the live ones read and judged by
:meth:`~pipelines.outputs.lease_info.LeaseInfo.abandoned` (:func:`live_leases`), which a destructive
step (``--overwrite``) asks before it removes anything.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from pipelines import storage
from pipelines.outputs import lease_info
from pipelines.outputs.lease import Lease
from pipelines.outputs.lease_info import LeaseInfo


def folder_leases(
    folder_url: str, storage_options: Mapping[str, Any] | None = None, prefix: str = ""
) -> list[Lease]:
    """The leases in ``folder_url`` (e.g. ``<store>/_leases``) whose names start with ``prefix``, by
    name; temporaries and stale-aside files left out, none when the folder does not exist. One
    listing, no lease read."""
    fs, path = storage.filesystem(folder_url, storage_options)
    fs.invalidate_cache(path)
    try:
        names = [posixpath.basename(str(n).rstrip("/")) for n in fs.ls(path, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [
        Lease(storage.join(folder_url, name), storage_options)
        for name in sorted(names)
        if name.startswith(prefix) and name.endswith(".json") and not storage.is_temp_name(name)
    ]


def live_leases(folder_url: str, storage_options: Mapping[str, Any] | None = None) -> list[LeaseInfo]:
    """The leases in ``folder_url`` (e.g. ``<store>/_leases``) that other live runs hold now: not
    abandoned and not held by this process. A destructive step (``--overwrite``) under a live lease
    would hollow out what that run is writing, so callers refuse it
    (:func:`~pipelines.outputs.ownership.remove_owned`)."""
    held: list[LeaseInfo] = []
    for lease in folder_leases(folder_url, storage_options):
        info = lease.read()
        if info is not None and info.owner not in lease_info.LIVE_OWNERS and not info.abandoned():
            held.append(info)
    return held

"""Rebuilding a complete tile without putting it at risk: the new tile is built aside, then swapped in.

A complete tile given items its record has not seen, or newer versions of its items, is rebuilt
(:mod:`pipelines.cubes.freshness`).
Every read of that rebuild can fail for reasons that pass (a catalog's server down, a rate limit, a
network mount gone): the preflight opens, odc-stac's pixel loads during the write, the diagnosis
of a failed load. None of that may cost the tile the store already holds. So a rebuild writes its
groups under ``<out>/_rebuild/<tile_id>/`` (the store's own layout, in a prefix no reader looks at)
while the tile and its record stay as they were, readable. Only once that build is complete does it
swap (:func:`swap_in`): remove the record (the tile is then absent, never half old and half new, to
readers that check records first), delete the old data, move the new data into ``<out>/<tile_id>/``
(one directory rename on local disk; a server-side copy per object, then a delete, on object
storage) and write the new record. A build that fails leaves the old tile, its record and its data
untouched: the tile's outcome is ``failed``, and the next run, still given items the record has not
seen, tries again. A run killed during the swap leaves the tile without a record (built again by
the next run, like any interrupted tile); one killed while building aside leaves ``_rebuild/<tile_id>``,
which the next run that takes the tile's lease deletes.

The cost is the swap: nothing on local disk; on object storage one server-side copy per object of
the rebuilt tile (no pixel travels through the client). A tile's first build is written in place.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

from pipelines.cubes.store import CubeStore
from pipelines.storage import is_local, join

STAGING_DIR = "_rebuild"
"""Where rebuilds are written before they replace a complete tile: ``<out>/_rebuild/<tile_id>/``."""


def staging_store(store: CubeStore) -> CubeStore:
    """The store rebuilds of ``store``'s tiles are written to (same layout, under :data:`STAGING_DIR`)."""
    return CubeStore(join(store.url, STAGING_DIR), store.storage_options)


def swap_in(store: CubeStore, staging: CubeStore, tile_id: str, record: Mapping[str, Any]) -> None:
    """Replace a complete tile of ``store`` with its rebuild in ``staging`` and record it (the caller
    holds the tile's lease and has checked it). The record goes first and comes back last, so the
    tile is never complete with part of its old and part of its new data."""
    store.remove_record(tile_id)
    store.clear_tile(tile_id)
    src, dst = staging._path(tile_id), store._path(tile_id)
    if staging._exists(src):  # an empty rebuild wrote no group
        fs = store.fs
        if is_local(store.url):
            os.replace(src, dst)
            with contextlib.suppress(OSError):  # other tiles' rebuilds may be under way
                os.rmdir(staging._path(""))
        else:
            files = [str(f) for f in fs.find(src)]
            fs.copy(files, [dst + f[len(src) :] for f in files])
            fs.rm(src, recursive=True)
        fs.invalidate_cache(src)
        fs.invalidate_cache(dst)
    store.write_record(tile_id, record)

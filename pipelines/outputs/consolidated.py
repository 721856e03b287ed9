"""Zarr v3 consolidated metadata: zarr-python's warning about it, and how a finished output gets it.

Consolidated metadata (the ``consolidated_metadata`` field of a group's ``zarr.json``, a zarr-python
extension of Zarr v3 that readers without it ignore) lets a reader open a group with one GET, and
``xr.open_zarr(path)`` without ``consolidated=`` opens such a group without its
"Failed to open Zarr store with consolidated metadata" RuntimeWarning. It is a copy of the children's
metadata: a copy that missed a later change would hide new arrays or attributes. So it is written
only where nothing changes afterwards:

* cube groups (:mod:`pipelines.cubes.store`): built whole in memory, then copied; never modified;
* ``aom embed-raster`` Zarr outputs (:mod:`pipelines.embed.raster_out`): by :func:`finish_consolidated`,
  in the one write that marks the store complete. A rerun or ``--overwrite`` removes the root
  ``zarr.json`` before it writes anything (:func:`~pipelines.outputs.remove_owned`), so no copy
  outlives the output it describes.

:func:`finish_consolidated` works on the documents, not on zarr-python's objects: it reads the group's
and the arrays' ``zarr.json`` as JSON and writes the group's back with :mod:`pipelines.storage`, in the
format zarr-python writes and reads (``{"kind": "inline", "must_understand": false, "metadata":
{name: <the array's zarr.json>}}``), so it depends on the Zarr v3 documents and that format only,
not on zarr-python's internals.

Not the embeddings store: its groups grow tile by tile under many writers (``docs/embeddings.md``
shows ``consolidated=False``).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from pipelines import storage
from pipelines.errors import InputError, RunFailedError

CONSOLIDATED_WARNING = "Consolidated metadata is currently not part"
# zarr-python warns on every consolidation that consolidated metadata is an extension of Zarr v3;
# these outputs use it on purpose. Filtered for that message only, once, here (a per-call
# catch_warnings around an await would race with other threads' filters).
warnings.filterwarnings("ignore", message=CONSOLIDATED_WARNING, module="zarr")

_NODE = "zarr.json"


def finish_consolidated(
    url: str,
    arrays: Sequence[str],
    attrs: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write the root ``zarr.json`` of the Zarr v3 group at ``url`` once, holding the group's
    attributes updated with ``attrs`` and the consolidated metadata of its child ``arrays`` (named,
    direct children: no listing, so non-Zarr folders such as ``_leases`` are never looked at).

    Reads the root's and the arrays' ``zarr.json`` (one GET each, concurrently), then writes the root
    with :func:`pipelines.storage.write_json_atomic`: one PUT on an object store, a rename on local
    disk, so no reader sees the final attributes without the copy or the copy without them. A failure
    before it (a missing document: FileNotFoundError; a node that is not a Zarr v3 group / array:
    RunFailedError) leaves the earlier document (e.g. ``aom_complete: false``). Call it only when nothing in the group changes
    afterwards (module docstring). NaN or infinity in the attributes, which are not JSON (zarr-python
    would write a bare ``NaN``), become ``null`` (:func:`pipelines.storage.json_safe`, as the cube
    store's attributes), so a run is not failed at its last write for a statistic that has no value."""
    root = storage.normalise_url(url)
    for name in arrays:
        if not name or "/" in name or name in (".", ".."):
            raise InputError(f"{name!r}: not the name of a direct child array")
    where = {name: storage.join(root, name, _NODE) for name in arrays}
    root_url = storage.join(root, _NODE)
    got = storage.read_many([root_url, *where.values()], storage_options)
    group = _node(root_url, got[root_url], "group")
    children = {name: _node(u, got[u], "array") for name, u in where.items()}
    document = {
        **group,
        "attributes": storage.json_safe({**dict(group.get("attributes") or {}), **attrs}),
        "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": children},
    }
    storage.write_json_atomic(root_url, document, storage_options)


def _node(url: str, data: bytes | None, node_type: str) -> dict[str, Any]:
    """The parsed ``zarr.json`` at ``url``, checked to be a Zarr v3 ``node_type`` node."""
    if data is None:
        raise FileNotFoundError(f"{storage.redact_url(url)}: no such Zarr node")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise RunFailedError(f"{storage.redact_url(url)}: not JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") != node_type:
        raise RunFailedError(f"{storage.redact_url(url)}: not the zarr.json of a Zarr v3 {node_type}")
    return doc

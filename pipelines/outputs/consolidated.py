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

Not the embeddings store: its groups grow tile by tile under many writers (``docs/embeddings.md``
shows ``consolidated=False``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

CONSOLIDATED_WARNING = "Consolidated metadata is currently not part"
# zarr-python warns on every consolidation that consolidated metadata is an extension of Zarr v3;
# these outputs use it on purpose. Filtered for that message only, once, here (a per-call
# catch_warnings around an await would race with other threads' filters).
warnings.filterwarnings("ignore", message=CONSOLIDATED_WARNING, module="zarr")


def finish_consolidated(store: Any, arrays: Sequence[str], attrs: Mapping[str, Any]) -> None:
    """Write the root ``zarr.json`` of ``store`` (a zarr v3 store) once, holding the group's
    attributes updated with ``attrs`` and the consolidated metadata of its child ``arrays`` (named:
    zarr's own listing would warn about non-Zarr folders such as ``_leases``). One PUT, so no reader
    sees the final attributes without the copy or the copy without them; a failure before it leaves
    the earlier document (e.g. ``aom_complete: false``). Call it only when nothing in the group
    changes afterwards (module docstring)."""
    import dataclasses

    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import ConsolidatedMetadata
    from zarr.core.sync import sync

    group = zarr.open_group(store=store, mode="r+", zarr_format=3, use_consolidated=False)
    children = {
        name: zarr.open_array(store=store, path=name, mode="r", zarr_format=3).metadata for name in arrays
    }
    meta = dataclasses.replace(
        group.metadata,
        attributes={**group.metadata.attributes, **attrs},
        consolidated_metadata=ConsolidatedMetadata(metadata=dict(children)),
    )
    sync(store.set("zarr.json", meta.to_buffer_dict(default_buffer_prototype())["zarr.json"]))

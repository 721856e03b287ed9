"""The tile cube: what the assembly of one tile hands over (:class:`TileCube`), and how a stored
(encoded) dataset decodes to reflectance (:func:`decode`).

Built by :func:`pipelines.cubes.assembly.assemble_tile`, its groups loaded by
:func:`pipelines.cubes.group_load.load_group`, written by :mod:`pipelines.cubes.run`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from pipelines.cubes.hosts import FailedHosts
from pipelines.cubes.spec import CubeSpec, SkippedAsset
from pipelines.tiling import Tile


def decode(ds: xr.Dataset) -> xr.Dataset:
    """Stored (encoded) dataset -> float32 reflectance with NaN, the same way a Zarr reader decodes it."""
    out = xr.decode_cf(ds)
    out["reflectance"] = out["reflectance"].astype(np.float32)
    out["reflectance"].attrs.pop("_FillValue", None)
    return out


@dataclass
class TileCube(Mapping[tuple[str, str], xr.Dataset]):
    """Datasets of one tile keyed by ``(collection, gsd_label)``.

    ``cube[key]`` is the decoded view (float32 reflectance with NaN, lazy); ``cube.encoded[key]``
    is exactly what the store holds. ``skipped`` lists the (item, asset) pairs left out and why;
    ``sources[key]`` the ``(item id, asset key, href)`` each group reads.
    """

    tile: Tile
    spec: CubeSpec
    encoded: dict[tuple[str, str], xr.Dataset] = field(default_factory=dict)
    skipped: list[SkippedAsset] = field(default_factory=list)
    sources: dict[tuple[str, str], list[tuple[str, str, str]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    read_options: Mapping[str, Any] | None = field(default=None, repr=False)
    """The read options the groups were built with (credentials included: memory only, never recorded)."""
    failed_hosts: FailedHosts | None = field(default=None, repr=False)
    """Hosts that failed transiently in this build, asked no more (none with ``skip_unreachable``)."""

    def __getitem__(self, key: tuple[str, str]) -> xr.Dataset:
        return decode(self.encoded[key])

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.encoded)

    def __len__(self) -> int:
        return len(self.encoded)

    @property
    def item_ids(self) -> list[str]:
        """Ids of the items read by at least one group."""
        return sorted({s[0] for srcs in self.sources.values() for s in srcs})

"""Padded tiles assembled straight from STAC items (``pipelines.cubes.assemble_tile``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pipelines.embed.chips import GroupPixels
from pipelines.embed.sources.padded import (
    PaddedTile,
    any_finite,
    band_infos_of,
    composite_into,
    items_of,
    padded_tile_obj,
    time_indices,
)
from pipelines.embed.sources.periods import Period
from pipelines.errors import RetryLaterError
from pipelines.registry import DEFAULT_CATALOG, BandSpec
from pipelines.runs import TileStatus
from pipelines.storage import public_uri
from pipelines.tiling import Tile, TileGrid

# ------------------------------------------------------------------------------------------
# STAC items


class AssetsUnreachableError(RetryLaterError, OSError):
    """Assets of a tile could not be read for a reason that passes (network, server, local I/O;
    :func:`pipelines.cubes.diagnosis.unreachable_reason`): the tile fails unrecorded, and a later run
    (the flow run's retry among them) reads them again."""


@dataclass(frozen=True)
class CatalogSource:
    """Padded tiles assembled straight from STAC items (``pipelines.cubes.assemble_tile``)."""

    catalog_url: str
    catalog: str = DEFAULT_CATALOG
    collections: tuple[str, ...] = ("sentinel-2-l2a",)
    bands: tuple[str, ...] = ()
    grid: TileGrid = field(default_factory=TileGrid)
    read_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    strip_mb: float = 64.0
    block_px: int = 512

    def describe(self) -> str:
        return f"catalog:{public_uri(self.catalog_url) if self.catalog_url else ''}"  # absolute URI, redacted

    def spec(self) -> Any:
        from pipelines.cubes import CubeSpec

        return CubeSpec(
            grid=self.grid,
            collections=self.collections,
            catalog=self.catalog,
            chunk_px=self.block_px,
            shard_px=self.block_px,
        )

    def band_infos(self) -> list[BandSpec]:
        spec = self.spec()
        infos = []
        for coll in self.collections:
            cs = spec.collection_spec(coll)
            for _label, (gsd, names) in spec.band_groups(coll).items():
                for name in names:
                    if self.bands and name not in self.bands:
                        continue
                    infos.append(replace(cs.sensor.band(name), gsd_m=float(gsd)))
        return infos

    @staticmethod
    def period_versions(items: Sequence[Mapping[str, Any]], period: Period) -> dict[str, str | None]:
        """Id -> version (``pipelines.search.item_version``: ``updated``, else ``created``,
        and the processing versions; else None) of the items dated in ``period``:
        those a padded tile given ``items`` considers (``considered_items`` and ``item_versions``,
        ``pipelines.embed.freshness``)."""
        from pipelines.cubes.freshness import item_versions

        return item_versions([i for i in items if _item_in_period(i, period)])

    def read(
        self, tile: Tile, period: Period, time_index: int, margin_m: float, items: Sequence[Mapping[str, Any]]
    ) -> PaddedTile:
        import time

        from pipelines.cubes import assemble_tile
        from pipelines.cubes.diagnosis import unreachable_reason

        t0 = time.perf_counter()
        out = PaddedTile(tile, time_index, margin_m)
        in_period = [i for i in items if _item_in_period(i, period)]
        out.item_versions = self.period_versions(in_period, period)
        out.considered_items = tuple(sorted(out.item_versions))
        if not in_period:
            out.status, out.reason = TileStatus.EMPTY, "no input items for this tile in the period"
            return out
        ptile = padded_tile_obj(tile, margin_m)
        cube = assemble_tile(ptile, in_period, self.spec(), read_options=dict(self.read_options) or None)
        unreachable = unreachable_reason(cube.skipped)
        if unreachable:  # never an empty or partial tile: it fails and the next run reads it again
            raise AssetsUnreachableError(unreachable)
        out.notes.extend(f"skipped {s.item}:{s.asset}: {s.reason}" for s in cube.skipped[:20])
        items_used: set[str] = set()
        for coll, label in cube:
            ds = cube[(coll, label)]
            bidx, infos = band_infos_of(ds, coll, self.bands)
            if not infos:
                continue
            tsel = time_indices(ds, period)
            _, _, h, w = ds["reflectance"].shape
            arr = np.full((len(infos), h, w), np.nan, dtype=np.float32)
            composite_into(arr, ds, bidx, tsel, (0, h, 0, w), (0, 0), self.strip_mb)
            out.groups.append(GroupPixels(coll, float(ds.attrs["gsd_m"]), infos, arr))
            out.observations[f"{coll}/{label}"] = len(tsel)
            items_used |= items_of(ds, tsel)
        out.groups.sort(key=lambda g: (g.gsd_m, g.collection))
        out.input_items = tuple(sorted(items_used))
        if not any(any_finite(g.pixels) for g in out.groups):
            out.status = TileStatus.EMPTY
            out.reason = "no valid pixel in the period (cloud, shadow, nodata or no acquisition)"
        out.read_s = time.perf_counter() - t0
        return out


def _item_in_period(item: Mapping[str, Any], period: Period) -> bool:
    from pipelines.cubes import item_datetime

    when = item_datetime(item)
    return when is not None and period.start <= when <= period.end

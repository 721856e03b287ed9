"""Prefect flow `ingest`: search a catalog -> saved items -> per-tile cubes (exactly once)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import INPUTS
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flows.common import batches, catalog_slot, publish_summary
from flows.params import AreaParams, StorageParams, empty_is_none
from pipelines.cubes import CubeSpec, SavedSearch, build_tiles, search_and_save, tiles_for_saved
from pipelines.search import SearchRequest
from pipelines.tiling import TileGrid


class IngestParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    collections: tuple[str, ...] = Field(..., min_length=1, description="registry collection ids")
    area: AreaParams
    out: str = Field(..., description="cube store URL (local path or s3://...)")
    catalog: str = "sample"
    catalog_url: str | None = Field(
        None, description="STAC API root or local catalog file; default: registry"
    )
    max_cloud_cover: float | None = Field(None, ge=0, le=100)
    tile_size_m: float = Field(7680.0, gt=0)
    tile_ids: tuple[str, ...] | None = Field(None, description="only these tiles (e.g. from a refresh event)")
    tiles_per_task: int = Field(4, ge=1)
    storage: StorageParams = StorageParams()

    @field_validator("collections", mode="before")
    @classmethod
    def _split_collections(cls, v: Any) -> Any:
        """Accept "a,b" entries (deployment parameters templated from the environment)."""
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list | tuple):
            return tuple(c.strip() for part in v for c in str(part).split(",") if c.strip())
        return v

    _empty_is_none = empty_is_none("catalog_url")

    def request(self, updated_since: str | None = None) -> SearchRequest:
        return SearchRequest(
            collections=self.collections,
            bbox=self.area.bbox,
            intersects=self.area.geometry,
            datetime=self.area.datetime,
            max_cloud_cover=self.max_cloud_cover,
            updated_since=updated_since,
            catalog=self.catalog,
        )

    def cube_spec(self) -> CubeSpec:
        return CubeSpec(
            grid=TileGrid(tile_size_m=self.tile_size_m), collections=self.collections, catalog=self.catalog
        )


@task(retries=3, retry_delay_seconds=[2, 10, 30], tags=["catalog-api"])
def search_task(params: IngestParams) -> SavedSearch:
    with catalog_slot():
        return search_and_save(
            params.request(),
            params.out,
            catalog_url=params.catalog_url,
            storage_options=params.storage.storage_options(),
        )


@task(retries=2, retry_delay_seconds=[5, 30])
def plan_tiles_task(items_url: str, params: IngestParams) -> list[str]:
    return tiles_for_saved(
        items_url, params.cube_spec().grid, params.storage.storage_options(), params.tile_ids
    )


# Tiles are the unit of retry and resume; results persist so a rerun of the same flow with the
# same saved items skips batches that already finished (the store also skips complete tiles).
@task(retries=2, retry_delay_seconds=[5, 30], cache_policy=INPUTS, persist_result=True)
def cube_batch_task(items_url: str, tile_ids: list[str], params: IngestParams) -> dict[str, Any]:
    return build_tiles(items_url, tile_ids, params.cube_spec(), params.out, params.storage.storage_options())


@flow(name="ingest", log_prints=True, validate_parameters=True, retries=1, retry_delay_seconds=30)
def ingest(params: IngestParams) -> dict[str, Any]:
    """Search -> saved items -> cubes per tile. Returns counts; a summary artifact is published."""
    logger = get_run_logger()
    saved = search_task(params)
    if saved.count == 0:
        logger.warning("no items found: %s", "; ".join(saved.notes))
        return {"items": 0, "tiles": 0, "done": 0, "failed": 0, "notes": list(saved.notes)}
    tile_ids = plan_tiles_task(saved.items_url, params)
    futures = [
        cube_batch_task.submit(saved.items_url, b, params) for b in batches(tile_ids, params.tiles_per_task)
    ]
    outcomes = [o for f in futures for o in f.result()["outcomes"]]
    failed = [o for o in outcomes if o["status"] == "failed"]
    publish_summary(
        "ingest-summary",
        f"ingest: {len(tile_ids)} tile(s) from {saved.count} item(s)",
        outcomes,
        ["tile_id", "status", "reason", "output_mb", "elapsed_s"],
        notes=list(saved.notes),
    )
    if failed:
        # Fail the run so Prefect retries it; the retry redoes only these tiles (complete ones
        # have records and are skipped).
        raise RuntimeError(
            f"{len(failed)} of {len(outcomes)} tile(s) failed, e.g. {failed[0]['tile_id']}: {failed[0]['reason']}"
        )
    return {
        "items": saved.count,
        "items_url": saved.items_url,
        "tiles": len(tile_ids),
        "tile_ids": list(tile_ids),
        "done": sum(o["status"] in ("done", "skipped", "empty") for o in outcomes),
        "failed": len(failed),
    }

"""Prefect flow `ingest`: search a catalog -> saved items -> per-tile cubes (exactly once).

Wiring only: the cube request is built by :meth:`pipelines.cubes.CubeRequest.from_dict` and planned
by :func:`pipelines.cubes.plan_cubes`, as `aom cubes` does.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import ConfigDict, Field, field_validator

from flows.common import (
    TilesFailedError,
    batches,
    catalog_slot,
    flow_retries_when_worth_it,
    install_exit_bound,
    publish_summary,
    retry_condition,
)
from flows.params import AreaParams, CredentialFree, StorageParams, empty_is_none, redacts_errors
from pipelines.cubes import CubeRequest, CubeSpec, SavedSearch, build_tiles, plan_saved, search_and_save
from pipelines.cubes.reading import read_attempts
from pipelines.outputs import HOLDER_WAIT_S
from pipelines.registry import DEFAULT_CATALOG
from pipelines.retry import RetryPolicy
from pipelines.runs import TileStatus
from pipelines.search import SearchRequest
from pipelines.storage import redact_record, redact_url
from pipelines.tiling import DEFAULT_TILE_SIZE_M


class IngestParams(CredentialFree):
    model_config = ConfigDict(extra="forbid", frozen=True)
    URL_FIELDS = ("out", "catalog_url")

    collections: tuple[str, ...] = Field(..., min_length=1, description="registry collection ids")
    area: AreaParams
    out: str = Field(..., description="cube store URL (local path or s3://...)")
    catalog: str = Field(DEFAULT_CATALOG, description="registry catalog name (`aom sensors` lists them)")
    catalog_url: str | None = Field(
        None, description="STAC API root or local catalog file; default: registry"
    )
    max_cloud_cover: float | None = Field(None, ge=0, le=100)
    tile_size_m: float = Field(DEFAULT_TILE_SIZE_M, gt=0)
    tiles: tuple[str, ...] | None = Field(None, description="only these tile ids (e.g. from a refresh event)")
    tiles_per_task: int = Field(4, ge=1)
    composite: str = Field(
        CubeRequest.composite,
        description="none: every acquisition; median: one stored median per tile and group (aom cubes --composite)",
    )
    max_attempts: int = Field(
        5, ge=1, description="attempts per HTTP request of the catalog search and of the asset reads"
    )
    holder_wait_min: float = Field(
        HOLDER_WAIT_S / 60,
        ge=0,
        description="minutes to wait for a tile another live run holds before reporting it failed "
        "(0: none; aom cubes --holder-wait)",
    )
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

    def cube_request(self) -> CubeRequest:
        """The same request `aom cubes` builds from the same values."""
        return CubeRequest.from_dict(
            {
                "catalog": self.catalog,
                "collections": self.collections,
                "aoi": self.area.bbox or self.area.geometry,
                "tiles": self.tiles,
                "tile_size_m": self.tile_size_m,
                "composite": self.composite,
            }
        )

    def cube_spec(self) -> CubeSpec:
        return self.cube_request().spec(self.collections)


# No Prefect retries here: every catalog request is already retried by pipelines.retry (one layer).
# Its result names the saved items under ``out`` as the task reads them (credentials and all, for a
# URL this process withheld from Prefect): never persisted.
@task(tags=["catalog-api"], persist_result=False)
@redacts_errors
def search_task(params: IngestParams) -> SavedSearch:
    params = params.with_credentials()
    with catalog_slot():
        return search_and_save(
            params.request(),
            params.out,
            catalog_url=params.catalog_url,
            storage_options=params.storage.storage_options(),
            retry=RetryPolicy(max_attempts=params.max_attempts),
        )


@task(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_condition)
@redacts_errors
def plan_tiles_task(items_url: str, params: IngestParams) -> list[str]:
    params = params.with_credentials()
    opts = params.storage.storage_options()
    return plan_saved(items_url, params.cube_request(), opts, read_attempts(params.max_attempts)).tile_ids


# Tiles are the unit of retry and resume. A writer is never cached: a cached result would report
# tiles the store may no longer hold (deleted tiles, a deleted store). Resume comes from the store
# itself, which skips tiles with a completion record, so a rerun after a deletion refills the holes.
@task(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_condition, cache_policy=NO_CACHE)
@redacts_errors
def cube_batch_task(items_url: str, tile_ids: list[str], params: IngestParams) -> dict[str, Any]:
    params = params.with_credentials()
    summary = build_tiles(
        items_url,
        tile_ids,
        params.cube_spec(),
        params.out,
        params.storage.storage_options(),
        read_options=read_attempts(params.max_attempts),
        holder_wait_s=params.holder_wait_min * 60,
    )
    return redact_record(summary)  # persisted by Prefect; its reasons feed the artifact and the failure


# One flow-level retry, for failed tiles and for what may pass (flows.common.worth_a_retry); any
# other failure (refused access, bad input) withdraws it and fails the run at once.
@flow(name="ingest", log_prints=True, validate_parameters=True, retries=1, retry_delay_seconds=30)
def ingest(params: IngestParams) -> dict[str, Any]:
    """Search -> saved items -> cubes per tile. Returns counts; a summary artifact is published."""
    install_exit_bound()
    with flow_retries_when_worth_it():
        return _ingest(params)


def _ingest(params: IngestParams) -> dict[str, Any]:
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
    failed = [o for o in outcomes if o["status"] == TileStatus.FAILED]
    publish_summary(
        "ingest-summary",
        f"ingest: {len(tile_ids)} tile(s) from {saved.count} item(s)",
        outcomes,
        ["tile_id", "status", "reason", "output_mb", "elapsed_s"],
        notes=list(saved.notes),
    )
    if failed:
        # Fail the run so Prefect retries it; the retry redoes only these tiles (complete ones
        # have records and are skipped), unless none of them may pass a retry.
        raise TilesFailedError.of(
            f"{len(failed)} of {len(outcomes)} tile(s) failed, e.g. {failed[0]['tile_id']}: {failed[0]['reason']}",
            failed,
        )
    return {  # a flow's result is persisted and shown by Prefect
        "items": saved.count,
        "items_url": redact_url(saved.items_url),
        "tiles": len(tile_ids),
        "tile_ids": list(tile_ids),
        "done": sum(o["status"] != TileStatus.FAILED for o in outcomes),
        "failed": len(failed),
    }

"""Prefect flows `embed` (tiles of an AOI into an embeddings dataset, fanned out over Dask) and
`retrain` (fine-tune from the current checkpoint on new cubes, then embed a new dataset version).

The flows pass URIs, never arrays: the heavy lifting is `pipelines.embed.run_embedding`, which
fans tiles out over a Dask cluster (a LocalCluster, or `dask_address`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from pydantic import BaseModel, ConfigDict, Field

from flows.common import publish_summary
from flows.params import AreaParams, StorageParams, empty_is_none
from flows.pretrain import PretrainParams, pretrain


class EmbedParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: str = Field(..., description="model.safetensors URL")
    out: str = Field(..., description="embeddings dataset URL")
    cubes: str | None = Field(None, description="cube store URL (or give catalog_url)")
    catalog_url: str | None = Field(None, description="catalog to assemble from directly (or give cubes)")
    area: AreaParams | None = None
    tile_ids: tuple[str, ...] | None = Field(None, description="only these tiles (e.g. from a refresh event)")
    datetime: str = Field(..., description="RFC 3339 range(s), comma-separated, one per time slice")
    tile_size_m: float = Field(7680.0, gt=0)
    version: str | None = None
    dask_address: str | None = None
    workers: int = Field(2, ge=0)
    storage: StorageParams = StorageParams()

    _empty_is_none = empty_is_none("cubes", "catalog_url", "version", "dask_address")


@task(retries=1, retry_delay_seconds=30)
def embed_task(params: EmbedParams) -> dict[str, Any]:
    from pipelines.embed import EmbedRequest, run_embedding

    summary = run_embedding(
        EmbedRequest(
            checkpoint=params.checkpoint,
            out=params.out,
            datetime=params.datetime,
            aoi=(params.area.bbox or params.area.geometry) if params.area else None,
            tiles=params.tile_ids or (),
            cubes=params.cubes,
            catalog=params.catalog_url,
            tile_size_m=params.tile_size_m,
            version=params.version,
            dask_address=params.dask_address,
            workers=params.workers,
            progress=False,
            storage_options=params.storage.storage_options(),
        )
    )
    return {**summary.to_dict(), "results": [r.to_dict() for r in summary.results]}


@flow(name="embed", log_prints=True, validate_parameters=True, retries=1, retry_delay_seconds=30)
def embed(params: EmbedParams) -> dict[str, Any]:
    summary = embed_task(params)
    rows = summary.get("results", [])
    publish_summary(
        "embed-summary",
        f"embed: {summary.get('tiles', 0)} tile(s) -> version {summary.get('version')}",
        rows,
        ["tile_id", "time_index", "status", "reason"],
        notes=summary.get("notes", []),
    )
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:  # Prefect retries the run; complete tiles have records and are skipped
        raise RuntimeError(
            f"{len(failed)} tile(s) failed, e.g. {failed[0]['tile_id']}: {failed[0].get('reason')}"
        )
    return summary


@flow(name="retrain", log_prints=True, validate_parameters=True)
def retrain(pretrain_params: PretrainParams, embed_params: EmbedParams) -> dict[str, Any]:
    """Fine-tune (``pretrain_params.init`` = current checkpoint) then embed a new dataset version."""
    trained = pretrain(pretrain_params)
    checkpoint = trained.get("checkpoint") or f"{pretrain_params.out.rstrip('/')}/model.safetensors"
    get_run_logger().info("retrain: new checkpoint %s; embedding a new version", checkpoint)
    embedded = embed(
        embed_params.model_copy(update={"checkpoint": checkpoint, "version": None, "tile_ids": None})
    )
    return {"pretrain": trained, "embed": embedded}

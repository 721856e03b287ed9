"""Prefect flows `embed` (tiles of an AOI into an embeddings dataset, fanned out over Dask) and
`retrain` (fine-tune from the current checkpoint on new cubes, then embed a new dataset version).

The flows pass URIs, never arrays: the heavy lifting is `pipelines.embed.run_embedding`, which
fans tiles out over a Dask cluster (`dask_address`, else `$DASK_SCHEDULER_ADDRESS`, else a
LocalCluster of `workers` processes).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from pydantic import ConfigDict, Field

from flows.common import TilesFailedError, flow_retries_when_worth_it, install_exit_bound, publish_summary
from flows.params import (
    AreaParams,
    CredentialFree,
    StorageParams,
    empty_is_none,
    redacts_errors,
    withhold_credentials,
)
from flows.pretrain import PretrainParams, pretrain
from pipelines.embed import EmbedRequest, run_embedding
from pipelines.redaction import redact_record, redact_url
from pipelines.runs import TileStatus
from pipelines.storage import join


class EmbedParams(CredentialFree):
    """Flow parameters: each field but ``area`` and ``storage`` is the :class:`EmbedRequest` field of
    the same name (and default), passed through :meth:`EmbedRequest.from_dict` as `aom embed` does."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    URL_FIELDS = ("checkpoint", "out", "cubes", "catalog_url", "dask_address")

    checkpoint: str = Field(..., description="model.safetensors URL")
    out: str = Field(..., description="embeddings dataset URL")
    cubes: str | None = Field(None, description="cube store URL (or give catalog_url)")
    catalog_url: str | None = Field(None, description="catalog to assemble from directly (or give cubes)")
    catalog: str = Field(EmbedRequest.catalog, description="registry catalog name of catalog_url")
    area: AreaParams | None = None
    tiles: tuple[str, ...] | None = Field(None, description="only these tile ids (e.g. from a refresh event)")
    datetime: str = Field(..., description="RFC 3339 range(s), comma-separated, one per time slice")
    tile_size_m: float = Field(EmbedRequest.tile_size_m, gt=0)
    token_m: float | None = Field(
        None, gt=0, description="ground size of one token (m); default: the checkpoint's token_ground_m"
    )
    embedding: str = Field(
        EmbedRequest.embedding, description="what a token vector is: position (default) or spectral"
    )
    quantisation: str | None = Field(
        None, description="int8-sqrt or float16 (default: int8-sqrt for position, float16 for spectral)"
    )
    version: str | None = None
    dask_address: str | None = Field(
        None, description="Dask scheduler (default: $DASK_SCHEDULER_ADDRESS, else local workers)"
    )
    workers: int = Field(EmbedRequest.workers, ge=0, description="local parallel workers (0: in-process)")
    max_attempts: int = Field(
        EmbedRequest.max_attempts,
        ge=1,
        description="attempts per HTTP request of the catalog_url search, of its asset reads and of the "
        "listing of out's completion records",
    )
    holder_wait_min: float = Field(
        EmbedRequest.holder_wait_min,
        ge=0,
        description="minutes to wait for a tile another live run holds before reporting it failed (0: none)",
    )
    storage: StorageParams = StorageParams()

    _empty_is_none = empty_is_none("cubes", "catalog_url", "quantisation", "version", "dask_address")

    def request(self) -> EmbedRequest:
        """The request `aom embed` builds from the same values."""
        values = self.model_dump(exclude={"area", "storage"})
        values["aoi"] = (self.area.bbox or self.area.geometry) if self.area else None
        values["storage_options"] = self.storage.storage_options()
        values["progress"] = False
        return EmbedRequest.from_dict(values)


# No task retries: catalog requests are retried by pipelines.retry, failed tiles by the one flow retry.
@task
@redacts_errors
def embed_task(params: EmbedParams) -> dict[str, Any]:
    summary = run_embedding(params.with_credentials().request())
    # persisted and shown by Prefect (and the source of the artifact and the failure message)
    return redact_record({**summary.to_dict(), "results": [r.to_dict() for r in summary.results]})


# One flow-level retry, for failed tiles and for what may pass (flows.common.worth_a_retry); any
# other failure (refused access, bad input) withdraws it and fails the run at once.
@flow(name="embed", log_prints=True, validate_parameters=True, retries=1, retry_delay_seconds=30)
def embed(params: EmbedParams) -> dict[str, Any]:
    install_exit_bound()
    with flow_retries_when_worth_it():
        return _embed(params)


def _embed(params: EmbedParams) -> dict[str, Any]:
    summary = embed_task(params)
    rows = summary.get("results", [])
    publish_summary(
        "embed-summary",
        f"embed: {summary.get('tiles', 0)} tile(s) -> version {summary.get('version')}",
        rows,
        ["tile_id", "time_index", "status", "reason"],
        notes=[*summary.get("warnings", []), *summary.get("notes", [])],
    )
    failed = [r for r in rows if r.get("status") == TileStatus.FAILED]
    if failed:  # Prefect retries the run (complete tiles have records and are skipped), if worth it
        raise TilesFailedError.of(
            f"{len(failed)} tile(s) failed, e.g. {failed[0]['tile_id']}: {failed[0].get('reason')}", failed
        )
    return summary


def trained_checkpoint(out: str, trained: dict[str, Any]) -> str:
    """The checkpoint a ``pretrain`` run wrote under ``out``, as a URL to read. Its result names it
    redacted (``https://***@host/run/model.safetensors``), so the part after ``out`` is joined to
    ``out`` itself, which keeps its credentials."""
    shown = str(trained.get("checkpoint") or "")
    prefix = redact_url(out).rstrip("/") + "/"
    if not shown or shown.startswith(prefix):
        return join(out, shown[len(prefix) :] if shown else "model.safetensors")
    return shown


@flow(name="retrain", log_prints=True, validate_parameters=True)
def retrain(pretrain_params: PretrainParams, embed_params: EmbedParams) -> dict[str, Any]:
    """Fine-tune (``pretrain_params.init`` = current checkpoint) then embed a new dataset version."""
    install_exit_bound()
    trained = pretrain(pretrain_params)
    # the checkpoint under the real out URL, masked again to be the embed run's parameter
    checkpoint = withhold_credentials(trained_checkpoint(pretrain_params.with_credentials().out, trained))
    get_run_logger().info("retrain: new checkpoint %s; embedding a new version", checkpoint)
    embedded = embed(
        embed_params.model_copy(update={"checkpoint": checkpoint, "version": None, "tiles": None})
    )
    return {"pretrain": trained, "embed": embedded}

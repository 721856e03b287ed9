"""Prefect flow `refresh`: poll a catalog since the last watermark, ingest exactly the tiles touched
by new items, then emit an event naming them (deployment triggers re-embed those tiles, and start a
fine-tuning run when enough new data has accumulated).

The watermark lives in object storage and is committed only after the run succeeded: after the
ingest, or, when the plan has no new items, after the searches (a quiet run commits too, so the
undated items' window follows the last run rather than the last run that found something). A
failed search or ingest commits nothing.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.events import emit_event
from pydantic import ConfigDict, Field

from flows.common import catalog_slot, install_exit_bound, publish_summary, retry_condition
from flows.ingest import IngestParams, ingest
from flows.params import CredentialFree, redacts_errors
from pipelines.search import RefreshPlan, commit_watermark, plan_refresh, should_retrain, summarise_tiles
from pipelines.storage import join, read_json, redact_url, write_json_atomic

TILES_UPDATED_EVENT = "aom.refresh.tiles-updated"
RETRAIN_EVENT = "aom.refresh.retrain-requested"


class RefreshParams(CredentialFree):
    model_config = ConfigDict(extra="forbid", frozen=True)
    URL_FIELDS = ("state_url",)

    ingest: IngestParams
    state_url: str | None = Field(None, description="where the watermark lives (default: <cubes>/_state)")
    retrain_min_new_items: int = Field(
        0, ge=0, description="request fine-tuning after this many new items (0: never)"
    )

    @property
    def watermark_url(self) -> str:
        return join(self.state_url or join(self.ingest.out, "_state"), "watermark.json")

    @property
    def counter_url(self) -> str:
        return join(self.state_url or join(self.ingest.out, "_state"), "items-since-training.json")


# No Prefect retries here: every catalog request is already retried by pipelines.retry (one layer).
# Its result holds the new items (their hrefs): never persisted.
@task(tags=["catalog-api"], persist_result=False)
@redacts_errors
def plan_task(params: RefreshParams) -> RefreshPlan:
    params = params.with_credentials()
    with catalog_slot():
        return plan_refresh(
            params.ingest.request(),
            params.watermark_url,
            grid=params.ingest.cube_request().grid,
            catalog_url=params.ingest.catalog_url,
            watermark_storage_options=params.ingest.storage.storage_options(),
        )


@task(retries=3, retry_delay_seconds=[2, 10], retry_condition_fn=retry_condition)
@redacts_errors
def commit_task(params: RefreshParams, plan: RefreshPlan) -> None:
    params = params.with_credentials()
    commit_watermark(params.watermark_url, plan, params.ingest.storage.storage_options())


@task(retries=3, retry_delay_seconds=[2, 10], retry_condition_fn=retry_condition)
@redacts_errors
def bump_counter_task(params: RefreshParams, n: int, reset: bool) -> int:
    params = params.with_credentials()
    opts = params.ingest.storage.storage_options()
    try:
        count = int(read_json(params.counter_url, opts)["items"])
    except FileNotFoundError:
        count = 0
    count = 0 if reset else count + n
    write_json_atomic(params.counter_url, {"items": count}, opts)
    return count


def cubes_resource(out: str) -> dict[str, str]:
    """The event resource of a cube store: named by its (redacted) URL, so a deployment's trigger
    matches the refreshes of its own store only (``prefect.yaml``: ``aom.cubes.<cubes URL>``)."""
    url = redact_url(out)
    return {"prefect.resource.id": f"aom.cubes.{url}", "prefect.resource.name": url}


@flow(name="refresh", log_prints=True, validate_parameters=True)
def refresh(params: RefreshParams) -> dict[str, Any]:
    install_exit_bound()
    logger = get_run_logger()
    plan = plan_task(params)  # a search that fails raises here: nothing is committed
    if plan.is_empty:
        # nothing to ingest, and the searches succeeded: the state moves on (the undated items'
        # window follows this run, ids out of the windows are pruned), or it would grow from the
        # last run that found something
        commit_task(params, plan)
        logger.info("refresh: %s", "; ".join(plan.notes))
        publish_summary("refresh-summary", "refresh: no new items", [], ["tile_id"], notes=list(plan.notes))
        return {"new_items": 0, "tile_ids": [], "notes": list(plan.notes)}
    logger.info(
        "refresh: %d new item(s) touch %d tile(s): %s",
        len(plan.new_items),
        len(plan.tile_ids),
        summarise_tiles(plan.tile_ids),
    )
    result = ingest(params.ingest.model_copy(update={"tiles": plan.tile_ids}))
    commit_task(params, plan)  # only after the ingest succeeded
    resource = cubes_resource(params.ingest.out)
    payload = {  # events are stored by Prefect: the store's URL is redacted as in the resource id
        "tile_ids": list(plan.tile_ids),
        "cubes": redact_url(params.ingest.out),
        "items": [i["id"] for i in plan.new_items],
    }
    emit_event(event=TILES_UPDATED_EVENT, resource=resource, payload=payload)
    since = bump_counter_task(params, len(plan.new_items), reset=False)
    retrain = should_retrain(0, min_new_items=params.retrain_min_new_items, items_since_training=since)
    if retrain:
        emit_event(
            event=RETRAIN_EVENT,
            resource=resource,
            payload={"cubes": redact_url(params.ingest.out), "new_items": since},
        )
        bump_counter_task(params, 0, reset=True)
    publish_summary(
        "refresh-summary",
        f"refresh: {len(plan.new_items)} new item(s), {len(plan.tile_ids)} tile(s)",
        [{"tile_id": t} for t in plan.tile_ids],
        ["tile_id"],
        notes=[*plan.notes, f"retrain requested: {retrain}"],
    )
    return {
        "new_items": len(plan.new_items),
        "tile_ids": list(plan.tile_ids),
        "ingest": result,
        "retrain": retrain,
    }

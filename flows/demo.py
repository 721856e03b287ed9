"""Prefect flow `demo`: the whole chain on the embedded default.

samples -> search -> cubes -> short `tiny` pretraining -> embeddings (2-worker Dask LocalCluster)
-> similarity query + PCA map. Runs against an ephemeral Prefect API when PREFECT_API_URL is unset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import install_sigterm_resend, retry_condition
from flows.params import redacts_errors, restore_credentials
from pipelines import demo as steps
from pipelines.redaction import redact_record


@task
def samples_task(paths: steps.DemoPaths) -> dict[str, Any]:
    return steps.build_samples(paths)


# No Prefect retries: pipelines.retry retries every catalog request (one layer).
@task(tags=["catalog-api"])
def search_task(paths: steps.DemoPaths, catalog_url: str) -> dict[str, Any]:
    return steps.search_samples(paths, catalog_url)


@task(retries=1, retry_condition_fn=retry_condition)
def cubes_task(paths: steps.DemoPaths) -> dict[str, Any]:
    return steps.build_cubes(paths)


@task
@redacts_errors
def pretrain_task(paths: steps.DemoPaths, pretrain_steps: int, init: str | None) -> dict[str, Any]:
    """``init``: as the flow got it (masked by ``aom demo`` if it had a credential); the result
    (which Prefect may persist) names it redacted."""
    trained = steps.pretrain(paths, pretrain_steps, restore_credentials(init) if init else None)
    return redact_record(trained)


@task(retries=1, retry_condition_fn=retry_condition)
def embed_task(paths: steps.DemoPaths, checkpoint: str, workers: int) -> dict[str, Any]:
    return steps.embed(paths, checkpoint, workers)


@task
def query_task(paths: steps.DemoPaths) -> dict[str, Any]:
    return steps.query(paths)


@flow(name="demo", log_prints=True)
def demo(
    out: str = steps.DEMO_OUT,
    pretrain_steps: int = steps.DEMO_PRETRAIN_STEPS,
    workers: int = steps.DEMO_WORKERS,
    init: str | None = None,
) -> dict[str, Any]:
    install_sigterm_resend()
    logger = get_run_logger()
    paths = steps.DemoPaths(Path(out).absolute())
    sample = samples_task(paths)
    for note in sample["notes"]:
        logger.info("samples: %s", note)
    found = search_task(paths, sample["items_parquet"])
    logger.info("search: %d items %s", found["count"], found["by_collection"])
    cubes = cubes_task(paths)
    logger.info("cubes: %s", cubes["summary"])
    trained = pretrain_task(paths, pretrain_steps, init)
    logger.info("pretrain: from %s, final loss %s", init or "random init", trained["final_loss"])
    embedded = embed_task(paths, trained["checkpoint"], workers)
    logger.info("embed:\n%s", embedded["summary"])
    answers = query_task(paths)
    for hit in answers["top"]:
        logger.info("similar: %s", hit)
    outputs = {
        "samples": str(paths.samples),
        "items": found["items_url"],
        "cubes": cubes["cubes"],
        "checkpoint": trained["checkpoint"],
        "loss_curve": trained["loss_curve"],
        "embeddings": embedded["embeddings"],
        "pca_map": answers["pca_png"],
        "similarity": answers["similarity_png"],
    }
    print(steps.format_outputs(outputs))
    return {"outputs": outputs, "top": answers["top"], "final_loss": trained["final_loss"]}

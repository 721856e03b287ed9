"""Ingest as library steps: search -> saved item list -> plan (tiles) -> cubes.

Each step takes and returns URLs and small JSON-able values, never arrays, so orchestration
(Prefect tasks, Dask) can retry or resume any step on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pipelines.cubes.headers import fill_projection, header_cache_url
from pipelines.cubes.plan import CubePlan, CubeRequest, complete_projection, plan_cubes
from pipelines.cubes.run import write_cubes
from pipelines.cubes.spec import CubeSpec
from pipelines.outputs import HOLDER_WAIT_S
from pipelines.retry import RetryPolicy
from pipelines.search import SearchRequest, load_result, save_result, search
from pipelines.storage import join


@dataclass(frozen=True)
class SavedSearch:
    items_url: str
    content_hash: str
    count: int
    count_by_collection: dict[str, int]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def search_and_save(
    request: SearchRequest,
    out_url: str,
    *,
    catalog_url: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    catalog_storage_options: Mapping[str, Any] | None = None,
    retry: RetryPolicy | None = None,
) -> SavedSearch:
    """Search and save the items under ``<out_url>/_search/<hash>.ndjson`` (content-addressed);
    ``retry``: the policy of each catalog request (default: :class:`RetryPolicy`'s).

    ``out_url`` must be new, empty or a cube store aom wrote (checked before anything is written)."""
    from pipelines.outputs import OutputKind, claim_output

    claim_output(out_url, OutputKind.CUBES, storage_options=storage_options)
    result = search(
        request,
        catalog_url=catalog_url,
        storage_options=dict(catalog_storage_options or {}) or None,
        retry=retry or RetryPolicy(),
    )
    digest = result.content_hash.split(":")[-1][:16]
    items_url = join(out_url, "_search", f"{digest}.ndjson")
    save_result(result, items_url, dict(storage_options or {}) or None)
    return SavedSearch(items_url, result.content_hash, len(result), result.count_by_collection, result.notes)


def plan_saved(
    items_url: str,
    request: CubeRequest,
    storage_options: Mapping[str, Any] | None = None,
    read_options: Mapping[str, Any] | None = None,
) -> CubePlan:
    """:func:`~pipelines.cubes.plan.plan_cubes` over the items saved at ``items_url`` (headers of
    items without projection metadata read once and cached beside them, with ``read_header``;
    ``read_options``: GDAL options of those reads)."""
    plan = plan_cubes(request, load_result(items_url, dict(storage_options or {}) or None).items)
    return complete_projection(plan, items_url, items_url, storage_options, read_options)[0]


def build_tiles(
    items_url: str,
    tile_ids: Sequence[str],
    spec: CubeSpec,
    out_url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    read_options: Mapping[str, Any] | None = None,
    holder_wait_s: float = HOLDER_WAIT_S,
) -> dict[str, Any]:
    """Write the cubes of ``tile_ids`` exactly once; returns the run summary as a dict
    (``read_options``: GDAL options of the asset reads, e.g. :func:`~pipelines.cubes.reading.read_attempts`;
    ``holder_wait_s``: as :func:`~pipelines.cubes.run.write_cubes`)."""
    items: Sequence[Mapping[str, Any]] = load_result(items_url, dict(storage_options or {}) or None).items
    if spec.missing_proj == "read_header":  # the headers plan_saved cached beside the items
        items, _ = fill_projection(
            items,
            spec.catalog,
            spec.registry(),
            read_options=read_options,
            cache_url=header_cache_url(items_url),
            storage_options=dict(storage_options or {}) or None,
        )
    summary = write_cubes(
        items,
        list(tile_ids),
        spec,
        out_url,
        storage_options,
        read_options=read_options,
        progress=False,
        holder_wait_s=holder_wait_s,
    )
    return summary.to_dict()

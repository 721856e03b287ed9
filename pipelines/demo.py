"""The demo chain as library steps on the embedded default (local files only).

Each step is a plain function over URLs so that ``flows/demo.py`` can wire them as Prefect tasks.
The area is the synthetic sample scene that straddles the UTM 31/32 boundary at 6°E, 45°N.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.runs import TileStatus

# West/south/east/north of the synthetic scenes (two UTM zones) and their dates.
DEMO_BBOX: tuple[float, float, float, float] = (5.97, 44.985, 6.03, 45.015)
DEMO_DATETIME = "2023-06-01/2023-06-30"
DEMO_COLLECTIONS: tuple[str, ...] = ("sentinel-2-l2a", "landsat-c2-l2", "hls2-s30", "hls2-l30")
DEMO_TILE_SIZE_M = 3840.0
# Defaults of the `aom demo` verb and the `demo` flow (defined here once).
DEMO_OUT = "aom-demo"
DEMO_PRETRAIN_STEPS = 60
DEMO_WORKERS = 2


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def items(self) -> str:
        return str(self.root / "search" / "items.ndjson")

    @property
    def cubes(self) -> str:
        return str(self.root / "cubes.zarr")

    @property
    def model(self) -> str:
        return str(self.root / "pretrain")

    @property
    def embeddings(self) -> str:
        return str(self.root / "embeddings.zarr")

    @property
    def pca_png(self) -> str:
        return str(self.root / "pca.png")

    @property
    def similarity_png(self) -> str:
        return str(self.root / "similarity.png")


def build_samples(paths: DemoPaths) -> dict[str, Any]:
    from pipelines.samples import build_sample_catalog

    cat = build_sample_catalog(paths.samples)
    return {"items_parquet": str(cat.items_parquet), "items": len(cat.item_ids), "notes": list(cat.notes)}


def search_samples(paths: DemoPaths, catalog_url: str) -> dict[str, Any]:
    from pipelines.search import SearchRequest, save_result, search

    request = SearchRequest(
        collections=DEMO_COLLECTIONS, bbox=DEMO_BBOX, datetime=DEMO_DATETIME, max_cloud_cover=80
    )
    result = search(request, catalog_url=catalog_url)
    save_result(result, paths.items)
    return {"items_url": paths.items, "count": len(result), "by_collection": result.count_by_collection}


def build_cubes(paths: DemoPaths) -> dict[str, Any]:
    from pipelines.cubes import CubeRequest, build_tiles, plan_saved

    request = CubeRequest(collections=DEMO_COLLECTIONS, aoi=DEMO_BBOX, tile_size_m=DEMO_TILE_SIZE_M)
    plan = plan_saved(paths.items, request)
    summary = build_tiles(paths.items, plan.tile_ids, plan.spec, paths.cubes)
    return {
        "cubes": paths.cubes,
        "tile_ids": plan.tile_ids,
        "summary": {s.value: summary[s.value] for s in TileStatus.outcomes()},
    }


def pretrain(paths: DemoPaths, steps: int, init: str | None = None) -> dict[str, Any]:
    """A short `tiny` pretraining on the demo cubes; ``init`` (e.g. the shipped checkpoint) makes it
    a fine-tuning of those weights, so the demo's embeddings come from a model that has seen real
    spectra rather than from a few dozen steps on the sample cubes."""
    from aom_model.train import PretrainConfig
    from pipelines.pretrain import pretrain as train_on_cubes

    cfg = PretrainConfig(
        cubes=(paths.cubes,),
        out=paths.model,
        model="tiny",
        init=init,
        max_steps=steps,
        batch_size=8,
        warmup_steps=max(1, steps // 10),
        checkpoint_every=max(1, steps),
        log_every=max(1, steps // 10),
        num_workers=0,
        resume=True,
        progress=False,
    )
    result = train_on_cubes(cfg)
    return {
        "checkpoint": result.checkpoint,
        "init": init,
        "final_loss": result.final_loss,
        "loss_curve": result.loss_curve_url,
    }


def embed(paths: DemoPaths, checkpoint: str, workers: int = DEMO_WORKERS) -> dict[str, Any]:
    from pipelines.embed import EmbedRequest, run_embedding

    request = EmbedRequest(
        checkpoint=checkpoint,
        out=paths.embeddings,
        datetime=DEMO_DATETIME,
        aoi=DEMO_BBOX,
        cubes=paths.cubes,
        tile_size_m=DEMO_TILE_SIZE_M,
        workers=workers,
        progress=False,
    )
    summary = run_embedding(request)
    return {"embeddings": paths.embeddings, "version": summary.version, "summary": summary.format()}


def query(paths: DemoPaths) -> dict[str, Any]:
    from pipelines.query import open_embeddings, pca_map, similar, similarity_heatmap

    emb = open_embeddings(paths.embeddings)
    lon, lat = (DEMO_BBOX[0] + DEMO_BBOX[2]) / 2 - 0.01, (DEMO_BBOX[1] + DEMO_BBOX[3]) / 2
    hits = similar(emb, lon=lon, lat=lat, k=5, exclude_radius_m=500)
    pca_map(emb, DEMO_BBOX, paths.pca_png)
    similarity_heatmap(emb, DEMO_BBOX, paths.similarity_png, lon=lon, lat=lat)
    return {
        "query": {"lon": lon, "lat": lat},
        "top": [
            {k: r[k] for k in ("rank", "score", "lon", "lat", "tile_id") if k in r} for r in hits.to_records()
        ],
        "pca_png": paths.pca_png,
        "similarity_png": paths.similarity_png,
    }


def format_outputs(outputs: Mapping[str, Any]) -> str:
    lines = ["", "AOM demo: every output"]
    for key, value in outputs.items():
        lines.append(f"  {key:12s} {value}")
    return "\n".join(lines)

"""Embedding runs: cubes or STAC items -> AOM encoder -> the embeddings store.

* ``request``: :class:`EmbedRequest` and the per-tile results;
* ``plan``: tiles, periods and units of work; ``claims``: the tile leases a run takes before it
  reads a tile; ``tasks``: the work of one unit;
* ``fanout``: Dask fan-out; ``run``: :func:`run_embedding`;
* ``layout``: how a tile is cut into chips and how their tokens are blended over the seams;
* ``chips``: padded regions -> chips -> token grids; ``sources``: cubes or catalogs as padded tiles;
* ``checkpoint``: checkpoints loaded once per process; ``raster``: embed one GeoTIFF/COG.
"""

from pipelines.embed.checkpoint import load_checkpoint_url
from pipelines.embed.chips import (
    EmbedConfigError,
    GroupPixels,
    Normaliser,
    alignment_tokens,
    band_record,
    chip_plan,
    choose_layout,
    embed_region,
    input_stats,
    make_batch,
    nanmedian_time,
    resolve_normaliser,
)
from pipelines.embed.fanout import Fanout, gpu_resources
from pipelines.embed.plan import plan_run
from pipelines.embed.raster import embed_raster
from pipelines.embed.raster_out import RasterEmbedResult, check_raster_complete
from pipelines.embed.request import EmbedRequest, EmbedSummary, TileResult
from pipelines.embed.run import run_embedding
from pipelines.embed.sources import CatalogSource, CubeSource, parse_periods
from pipelines.embed.tasks import load_unit, process_unit

__all__ = [
    "CatalogSource",
    "CubeSource",
    "EmbedConfigError",
    "EmbedRequest",
    "EmbedSummary",
    "Fanout",
    "GroupPixels",
    "Normaliser",
    "RasterEmbedResult",
    "TileResult",
    "alignment_tokens",
    "band_record",
    "check_raster_complete",
    "chip_plan",
    "choose_layout",
    "embed_raster",
    "embed_region",
    "gpu_resources",
    "input_stats",
    "load_checkpoint_url",
    "load_unit",
    "make_batch",
    "nanmedian_time",
    "parse_periods",
    "plan_run",
    "process_unit",
    "resolve_normaliser",
    "run_embedding",
]

"""The AOM embeddings store: a Zarr v3 hierarchy of per-UTM-zone token grids.

* ``format``: constants, :class:`EmbeddingsVersion`, errors; ``quantize``: int8/float16 codes;
* ``grid``: the per-zone token lattice (:class:`ZoneGrid`); ``store``: versions and zone arrays;
* ``records``: per-tile writes and completion records; ``stac``: STAC items of a version;
  ``stac_catalog``: the store's STAC tree (writing it, stale items);
* ``tilevectors``: the consolidated per-zone tile-vector grid (few objects);
* ``cog``: how a COG is written; ``publish``: per-tile COGs + STAC items every loader opens;
* ``metadata``: what geoemb: and emb: both say (chip layout, the encoding of a store or a COG).
"""

from pipelines.embeddings.cog import (
    COG_MEDIA_TYPE,
    embedding_band_names,
    embedding_tags,
    gtiff_to_cog,
    provenance_tags,
    write_cog,
    write_embedding_cog,
)
from pipelines.embeddings.format import (
    EMB_EXTENSION,
    FORMAT_VERSION,
    GEOEMB_CONVENTION,
    PROJ_CONVENTION,
    QUANTISATIONS,
    READABLE_FORMATS,
    SPATIAL_CONVENTION,
    EmbeddingsStoreError,
    EmbeddingsVersion,
    Quantisation,
    embeddings_dims,
    parse_time,
    period_bounds,
    version_name,
)
from pipelines.embeddings.grid import ZoneGrid, check_epsg, crs_wkt
from pipelines.embeddings.metadata import ValueEncoding, raster_encoding
from pipelines.embeddings.publish import ENCODINGS, PublishSummary, publish_cogs
from pipelines.embeddings.quantize import (
    DECODE_LUT,
    NODATA_Q,
    QUANT_MAX_ABS_ERROR,
    dequantize,
    encode,
    error_bound,
    quantisation_error,
    quantize,
    unit,
)
from pipelines.embeddings.records import (
    considered_index_url,
    list_complete_tiles,
    read_considered_index,
    read_tile_record,
    read_tile_records,
    record_times,
    record_url,
    remove_abandoned_tile_leases,
    tile_is_complete,
    tile_lease,
    write_considered_index,
    write_tile,
)
from pipelines.embeddings.stac import StacOptions, collection_dict, tile_item
from pipelines.embeddings.stac_catalog import stale_items, write_stac
from pipelines.embeddings.store import (
    array_dims,
    band_first,
    create_version,
    ensure_zone,
    geoemb_attrs,
    list_versions,
    open_root,
    read_version,
    shared_writer,
    version_format,
    version_zones,
    zarr_store,
)
from pipelines.embeddings.tilevectors import TILES_GROUP, consolidate_tile_vectors, ensure_tile_group

__all__ = [
    "COG_MEDIA_TYPE",
    "DECODE_LUT",
    "EMB_EXTENSION",
    "ENCODINGS",
    "FORMAT_VERSION",
    "GEOEMB_CONVENTION",
    "NODATA_Q",
    "PROJ_CONVENTION",
    "QUANTISATIONS",
    "QUANT_MAX_ABS_ERROR",
    "READABLE_FORMATS",
    "SPATIAL_CONVENTION",
    "TILES_GROUP",
    "EmbeddingsStoreError",
    "EmbeddingsVersion",
    "PublishSummary",
    "Quantisation",
    "StacOptions",
    "ValueEncoding",
    "ZoneGrid",
    "array_dims",
    "band_first",
    "check_epsg",
    "collection_dict",
    "considered_index_url",
    "consolidate_tile_vectors",
    "create_version",
    "crs_wkt",
    "dequantize",
    "embedding_band_names",
    "embedding_tags",
    "embeddings_dims",
    "encode",
    "ensure_tile_group",
    "ensure_zone",
    "error_bound",
    "geoemb_attrs",
    "gtiff_to_cog",
    "list_complete_tiles",
    "list_versions",
    "open_root",
    "parse_time",
    "period_bounds",
    "provenance_tags",
    "publish_cogs",
    "quantisation_error",
    "quantize",
    "raster_encoding",
    "read_considered_index",
    "read_tile_record",
    "read_tile_records",
    "read_version",
    "record_times",
    "record_url",
    "remove_abandoned_tile_leases",
    "shared_writer",
    "stale_items",
    "tile_is_complete",
    "tile_item",
    "tile_lease",
    "unit",
    "version_format",
    "version_name",
    "version_zones",
    "write_cog",
    "write_considered_index",
    "write_embedding_cog",
    "write_stac",
    "write_tile",
    "zarr_store",
]

"""Query AOM embedding stores: open, select, similarity search, maps, exports, few-shot mapping.

Example (see ``docs/query.md`` for more)::

    from pipelines.query import open_embeddings, select, similar, pca_map, export, classify

    emb = open_embeddings("s3://bucket/embeddings", version="aom-tiny-3f2a9c1b0d4e")
    hits = similar(emb, lon=5.99, lat=45.0, k=10)
    pca_map(emb, (5.95, 44.98, 6.05, 45.02), "pca.png")
    export(emb, (5.95, 44.98, 6.05, 45.02), "area.tif")
    print(classify(emb, "labels.geojson", out="classes.tif").summary())
"""

from pipelines.query.export import (
    export,
    to_geoparquet,
    to_geotiff,
    tokens_geoparquet,
    write_geometries_geoparquet,
    write_points_geoparquet,
)
from pipelines.query.fewshot import FewShotResult, Labels, classify, fit_fewshot, predict_map, read_labels
from pipelines.query.maps import cosine_map, pca_map, pca_rgb, render_png, similarity_heatmap, similarity_map
from pipelines.query.open import (
    BrokenStoreError,
    Embeddings,
    QueryError,
    TileRef,
    available_versions,
    open_embeddings,
)
from pipelines.query.select import parse_bbox, parse_crs, select, select_zones, vectors_at
from pipelines.query.similarity import (
    SimilarityResult,
    Whitening,
    fit_whitening,
    query_vector,
    similar,
    topk_cosine,
)
from pipelines.query.tiles import TileVectors, similar_tiles, tile_vectors, tiles_geoparquet

__all__ = [
    "BrokenStoreError",
    "Embeddings",
    "FewShotResult",
    "Labels",
    "QueryError",
    "SimilarityResult",
    "TileRef",
    "TileVectors",
    "Whitening",
    "available_versions",
    "classify",
    "cosine_map",
    "export",
    "fit_fewshot",
    "fit_whitening",
    "open_embeddings",
    "parse_bbox",
    "parse_crs",
    "pca_map",
    "pca_rgb",
    "predict_map",
    "query_vector",
    "read_labels",
    "render_png",
    "select",
    "select_zones",
    "similar",
    "similar_tiles",
    "similarity_heatmap",
    "similarity_map",
    "tile_vectors",
    "tiles_geoparquet",
    "to_geoparquet",
    "to_geotiff",
    "tokens_geoparquet",
    "topk_cosine",
    "vectors_at",
    "write_geometries_geoparquet",
    "write_points_geoparquet",
]

"""Seeded generators that only tests and benchmarks use (never imported by production code).

* ``cube_items``: small STAC items with real GeoTIFF assets, for cube tests;
* ``cubes``: synthetic cube stores in the exact layout the cube builder writes;
* ``embeddings``: synthetic embeddings stores with known ground truth;
* ``bookkeeping``: completion records without pixels, for counting bookkeeping requests.
"""

from pipelines.testing.bookkeeping import considered_items, cube_record, embedding_record, spread_tiles
from pipelines.testing.cube_items import make_item, reflectance_model
from pipelines.testing.cubes import LANDSAT, SENTINEL2, write_synthetic_cubes
from pipelines.testing.embeddings import (
    SyntheticScene,
    SyntheticStore,
    build_synthetic_store,
    synthetic_codes,
    synthetic_version,
)

__all__ = [
    "LANDSAT",
    "SENTINEL2",
    "SyntheticScene",
    "SyntheticStore",
    "build_synthetic_store",
    "considered_items",
    "cube_record",
    "embedding_record",
    "make_item",
    "reflectance_model",
    "spread_tiles",
    "synthetic_codes",
    "synthetic_version",
    "write_synthetic_cubes",
]

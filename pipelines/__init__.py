"""The AOM pipeline library: STAC catalogs -> Zarr cubes -> embeddings stores -> queries.

Role subpackages, one home per concept (``docs/architecture.md`` draws the layers and their arrows):

* :mod:`pipelines.search`: search STAC APIs and local catalogs; saved results; refresh watermarks;
* :mod:`pipelines.cubes`: per-tile Zarr v3 reflectance cubes, exactly once per tile;
* :mod:`pipelines.embed`: AOM embeddings of cubes, catalogs or single rasters;
* :mod:`pipelines.embeddings`: the embeddings store format (zones, quantisation, records, STAC);
* :mod:`pipelines.query`: similarity, maps, exports and few-shot mapping over embeddings stores;
* :mod:`pipelines.evaluation`: band-missing, cross-sensor and cross-resolution evaluation;
* :mod:`pipelines.samples`: the embedded sample catalog (real and synthetic products);
* :mod:`pipelines.testing`: seeded generators for tests and benchmarks only.

Leaves that everything may import: :mod:`~pipelines.registry` (sensors as data),
:mod:`~pipelines.storage` (any fsspec URL; the one ``--storage-options`` parser),
:mod:`~pipelines.retry`, :mod:`~pipelines.tiling` (the UTM tile grid and its default size),
:mod:`~pipelines.runs` (the tile status vocabulary, reaching Dask) and :mod:`~pipelines.errors`
(the exception hierarchy).

The names below are loaded on first use, so ``import pipelines.storage`` stays light (no torch,
no odc-stac): ``from pipelines import SearchRequest, write_cubes`` works as usual.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS: dict[str, str] = {
    # errors
    "AOMError": "pipelines.errors",
    "InputError": "pipelines.errors",
    "RunFailedError": "pipelines.errors",
    # leaves
    "Registry": "pipelines.registry",
    "load_registry": "pipelines.registry",
    "Tile": "pipelines.tiling",
    "TileGrid": "pipelines.tiling",
    "RetryPolicy": "pipelines.retry",
    "DEFAULT_TILE_SIZE_M": "pipelines.tiling",
    "TileStatus": "pipelines.runs",
    "parse_storage_options": "pipelines.storage",
    # search
    "SearchRequest": "pipelines.search",
    "SearchResult": "pipelines.search",
    "save_result": "pipelines.search",
    "load_result": "pipelines.search",
    # cubes
    "CubeRequest": "pipelines.cubes",
    "CubeSpec": "pipelines.cubes",
    "plan_cubes": "pipelines.cubes",
    "CubeStore": "pipelines.cubes",
    "write_cubes": "pipelines.cubes",
    # embed
    "EmbedRequest": "pipelines.embed",
    "run_embedding": "pipelines.embed",
    "embed_raster": "pipelines.embed",
    # embeddings and queries
    "list_versions": "pipelines.embeddings",
    "open_embeddings": "pipelines.query",
    # samples
    "build_sample_catalog": "pipelines.samples",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

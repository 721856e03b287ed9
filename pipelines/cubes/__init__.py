"""Cubes: STAC items -> per-tile Zarr v3 reflectance cubes, exactly once per tile.

* ``spec``: what a run builds (:class:`CubeSpec`) and the reflectance encodings;
* ``store``: the cube store (:class:`CubeStore`): layout, per-tile writes, completion records, reads;
* ``reading``: item selection, GDAL environment and read-error classes;
* ``assembly``: one tile's items -> per-(collection, GSD) datasets;
* ``run``: :func:`write_cubes` over many tiles (threads or Dask);
* ``ingest``: search -> saved items -> tiles -> cubes as resumable steps.
"""

from pipelines.cubes.assembly import assemble_tile
from pipelines.cubes.ingest import SavedSearch, build_tiles, search_and_save, tiles_for_saved
from pipelines.cubes.reading import classify_error, item_datetime
from pipelines.cubes.run import RunSummary, TileOutcome, process_tile, write_cubes
from pipelines.cubes.spec import CubeSpec
from pipelines.cubes.store import CubeStore, CubeStoreError, group_path

__all__ = [
    "CubeSpec",
    "CubeStore",
    "CubeStoreError",
    "RunSummary",
    "SavedSearch",
    "TileOutcome",
    "assemble_tile",
    "build_tiles",
    "classify_error",
    "group_path",
    "item_datetime",
    "process_tile",
    "search_and_save",
    "tiles_for_saved",
    "write_cubes",
]

"""Cubes: STAC items -> per-tile Zarr v3 reflectance cubes, exactly once per tile.

* ``spec``: what a run builds (:class:`CubeSpec`) and the reflectance encodings;
* ``store``: the cube store (:class:`CubeStore`), the one reader and writer of the layout: per-tile
  writes, completion records (:func:`tile_record`, :func:`group_entry`), reads;
* ``groups``: one group's validated metadata (:class:`GroupMeta`) and window reads;
* ``reading``: item selection, GDAL environment and read-error classes, whether a failed tile may
  pass a rerun (:func:`tile_failure_retryable`, cube and embedding runs alike);
* ``headers``: the grids of items without projection metadata, read from the file headers and cached;
* ``assembly``: one tile's items -> per-(collection, GSD) datasets (:func:`assemble_tile`), a
  :class:`~pipelines.cubes.tilecube.TileCube` (``tilecube``); one group's load, block encoding and
  solar-day fusing (``group_load``); the diagnosis of failed reads (``diagnosis``);
* ``lattice``: where each group's pixel lattice lies (the items' native pixel grid, by evidence);
* ``plan``: :class:`CubeRequest` -> collections, items and tiles (:func:`plan_cubes`), the one
  planner of the ``aom cubes`` verb, the ``ingest`` flow and the demo;
* ``run``: :func:`write_cubes` over many tiles (threads or Dask);
* ``freshness``: complete tiles a run must rebuild because it has items their record has not seen,
  or newer versions (STAC ``updated``) of items it has;
* ``ingest``: search -> saved items -> plan -> cubes as resumable steps.
"""

from pipelines.cubes.assembly import assemble_tile
from pipelines.cubes.freshness import Freshness, freshness
from pipelines.cubes.groups import GroupMeta
from pipelines.cubes.ingest import SavedSearch, build_tiles, plan_saved, search_and_save
from pipelines.cubes.lattice import GroupLattice, lattice_shift, native_lattice
from pipelines.cubes.plan import CubePlan, CubeRequest, complete_projection, plan_cubes, read_items
from pipelines.cubes.reading import classify_error, item_datetime, tile_failure_retryable
from pipelines.cubes.run import process_tile, write_cubes
from pipelines.cubes.spec import LAYOUT_VERSION, CubeSpec, encode_reflectance, gsd_label, reflectance_attrs
from pipelines.cubes.store import CubeStore, CubeStoreError, group_entry, group_path, tile_record
from pipelines.cubes.summary import RunSummary, TileOutcome

__all__ = [
    "LAYOUT_VERSION",
    "CubePlan",
    "CubeRequest",
    "CubeSpec",
    "CubeStore",
    "CubeStoreError",
    "Freshness",
    "GroupLattice",
    "GroupMeta",
    "RunSummary",
    "SavedSearch",
    "TileOutcome",
    "assemble_tile",
    "build_tiles",
    "classify_error",
    "complete_projection",
    "encode_reflectance",
    "freshness",
    "group_entry",
    "group_path",
    "gsd_label",
    "item_datetime",
    "lattice_shift",
    "native_lattice",
    "plan_cubes",
    "plan_saved",
    "process_tile",
    "read_items",
    "reflectance_attrs",
    "search_and_save",
    "tile_failure_retryable",
    "tile_record",
    "write_cubes",
]

"""What a command may do to its output: ownership, atomic results, one writer per store.

The safety contract of every ``aom`` verb (``docs/safety.md``), in one place:

- :mod:`pipelines.outputs.ownership`: an existing output is reused only when this project made it
  (and it is of the same kind); ``--overwrite`` removes only what the project wrote; bucket and
  prefix roots, filesystem roots and outputs equal to or containing an input are refused.
- :mod:`pipelines.outputs.atomic`: single files appear under their final name only once complete
  (leftovers of killed runs are cleaned by the next run); stores carry a completion marker.
- :mod:`pipelines.outputs.consolidated`: Zarr v3 consolidated metadata, written only where nothing
  changes afterwards (cube groups; an ``embed-raster`` Zarr output in its completing write).
- :mod:`pipelines.outputs.conventions`: georeferencing of Zarr outputs as the registered ``proj:`` /
  ``spatial:`` Zarr conventions, one builder for every store that writes a grid.
- :mod:`pipelines.outputs.lease`: a lease (owner, heartbeat, expiry) taken by exclusive create on
  local disk and on object storage, before anything is written under it; what a lease says and
  when it may be taken over or waited for is :mod:`pipelines.outputs.lease_info`; its local-disk
  file protocol (exclusive create, rename-aside take-over, locked replace) is
  :mod:`pipelines.outputs.lease_local`, its object-store conditional writes
  :mod:`pipelines.outputs.lease_remote`; the leases of a folder (which other live runs hold)
  :mod:`pipelines.outputs.lease_folder`.
"""

from pipelines.outputs.atomic import (
    clean_partials,
    partial_path,
)
from pipelines.outputs.consolidated import CONSOLIDATED_WARNING, finish_consolidated
from pipelines.outputs.conventions import (
    PROJ_CONVENTION,
    SPATIAL_CONVENTION,
    dataset_convention_attrs,
    geo_convention_attrs,
)
from pipelines.outputs.lease import Lease
from pipelines.outputs.lease_info import (
    HOLDER_WAIT_S,
    HolderWait,
    LeaseHeldError,
    LeaseInfo,
    LeaseLostError,
)
from pipelines.outputs.ownership import (
    MARKER_NAME,
    OutputError,
    OutputKind,
    check_file_output,
    check_not_input,
    check_output_format,
    check_writable_target,
    claim_output,
    output_kind,
    read_marker,
    remove_owned,
    write_marker,
)

__all__ = [
    "CONSOLIDATED_WARNING",
    "HOLDER_WAIT_S",
    "MARKER_NAME",
    "PROJ_CONVENTION",
    "SPATIAL_CONVENTION",
    "HolderWait",
    "Lease",
    "LeaseHeldError",
    "LeaseInfo",
    "LeaseLostError",
    "OutputError",
    "OutputKind",
    "check_file_output",
    "check_not_input",
    "check_output_format",
    "check_writable_target",
    "claim_output",
    "clean_partials",
    "dataset_convention_attrs",
    "finish_consolidated",
    "geo_convention_attrs",
    "output_kind",
    "partial_path",
    "read_marker",
    "remove_owned",
    "write_marker",
]

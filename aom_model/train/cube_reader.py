"""What training needs from a cube store: the :class:`CubeReader` and :class:`GroupInfo` protocols.

Training reads cube stores (the layout is ``docs/cubes.md``) but does not implement the format:
``pipelines.cubes.CubeStore`` is its one reader and writer. ``aom_model`` may import only
``pipelines.storage`` and ``pipelines.errors`` from the pipelines (so a model or training image
does not depend on the cube builder's code), hence this module states, as typing protocols,
exactly what the chip index, the chip reader and the normalisation statistics call, and training
receives a :data:`StoreOpener` (``url, storage_options -> CubeReader``) from its caller.
``pipelines.pretrain`` composes the two: ``run_pretraining(cfg, CubeStore.open)``.

Contract of a reader:

* only tiles with a completion record are visible; a record's ``status`` is ``complete`` (the
  tile holds data) or ``empty``; a tile with data but no record is an interrupted build, never read;
* a group (``<tile>/<collection>/<gsd_label>``) opened with ``lazy=True`` is indexed without dask,
  so a window read touches only the chunks under it; windows are float32 reflectance with NaN
  where missing (cloud, shadow, nodata);
* ``open_raw`` reads a group shard by shard in its stored dtype, decoding only the bands asked
  for (the chip loader's path: each (tile, time) shard decoded once, normalised on the device);
* metadata that cannot be used raises :class:`~pipelines.errors.CubeDataError` naming the group.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from pipelines.errors import CubeDataError

__all__ = ["CubeDataError", "CubeReader", "GroupInfo", "RawReader", "StoreOpener"]


class GroupInfo(Protocol):
    """Validated metadata of one (tile, collection, GSD) group (``pipelines.cubes.GroupMeta``)."""

    @property
    def tile_id(self) -> str: ...

    @property
    def collection(self) -> str: ...

    @property
    def gsd_label(self) -> str: ...

    @property
    def sensor(self) -> str: ...

    @property
    def gsd_m(self) -> float: ...

    @property
    def bands(self) -> tuple[str, ...]: ...

    @property
    def wavelength_nm(self) -> tuple[float, ...]: ...

    @property
    def fwhm_nm(self) -> tuple[float, ...]: ...

    @property
    def x0(self) -> float:
        """Left edge of the grid (CRS units, m)."""
        ...

    @property
    def y0(self) -> float:
        """Top edge of the grid (CRS units, m)."""
        ...

    @property
    def times(self) -> tuple[int, ...]:
        """Acquisition times as datetime64[ns] integers."""
        ...

    @property
    def band_keys(self) -> tuple[str, ...]:
        """``<sensor>/<band>`` per band."""
        ...

    @property
    def extent_m(self) -> tuple[float, float]:
        """(height, width) of the grid in metres."""
        ...


class RawReader(Protocol):
    """A group's reflectance in its stored dtype, read shard by shard (``pipelines.cubes.shards.RawGroup``).

    ``read`` decodes each shard it touches once and only the inner chunks of the bands asked for;
    values are the stored ones (int16 with ``fill`` = missing, or float16 with NaN = missing);
    reflectance = stored * ``scale`` + ``offset``. ``to_float`` is exactly what ``read_window`` returns.
    """

    @property
    def shape(self) -> tuple[int, ...]:
        """(time, band, y, x)."""
        ...

    @property
    def dtype(self) -> np.dtype[Any]: ...

    @property
    def scale(self) -> float: ...

    @property
    def offset(self) -> float: ...

    @property
    def fill(self) -> float | None:
        """The integer fill value (missing), or None for float storage (NaN = missing)."""
        ...

    def read(self, t: int, bands: Sequence[int], y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """[len(bands), h, w] stored values of acquisition ``t``."""
        ...

    def to_float(self, raw: np.ndarray) -> np.ndarray:
        """float32 reflectance, NaN = missing."""
        ...


class CubeReader(Protocol):
    """Read access to one cube store, as training uses it (``pipelines.cubes.CubeStore``)."""

    def tile_records(self) -> Mapping[str, Mapping[str, Any]]:
        """tile_id -> completion record (``status`` ``complete`` or ``empty``) of every recorded tile."""
        ...

    def groups(self, tile_id: str) -> list[tuple[str, str]]:
        """(collection, gsd_label) of every group of a recorded tile."""
        ...

    def open_group(self, tile_id: str, collection: str, gsd_label: str, *, lazy: bool = ...) -> Any:
        """A group's Dataset; ``lazy=True``: indexed without dask (a slice reads only its chunks)."""
        ...

    def group_meta(self, tile_id: str, collection: str, gsd_label: str, ds: Any) -> GroupInfo:
        """The validated metadata of an opened group (CubeDataError naming what is wrong)."""
        ...

    def read_window(self, ds: Any, t: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """[C, h, w] float32 reflectance of acquisition ``t`` of an opened group (NaN = missing)."""
        ...

    def open_raw(self, tile_id: str, collection: str, gsd_label: str) -> RawReader:
        """A group's reflectance for shard-level reads in the stored dtype (what the chip loader uses)."""
        ...


StoreOpener = Callable[[str, Mapping[str, Any] | None], CubeReader]
"""``(url, storage_options) -> CubeReader`` for an existing store (CubeDataError when there is none);
it must pickle (data-loader workers reopen stores), e.g. ``pipelines.cubes.CubeStore.open``."""

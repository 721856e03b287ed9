"""Stored composites: a cube run that keeps one median per tile and group instead of every acquisition.

``aom cubes --composite median`` (:attr:`CubeSpec.composite`) writes, per (collection, GSD) group,
the per-pixel median of the valid observations of every acquisition the run assembled (cloud,
shadow and nodata never enter it): the same median ``aom embed`` computes on the fly from a store of
acquisitions (:func:`pipelines.embed.sources.padded.composite_raw_into`), done once at ingest, so an
embedding run decodes one image instead of all of them (docs/embedding.md, "Cores per H100").

What the group then holds: ``time`` has one entry, the earliest acquisition (so any ``aom embed``
period that contains the run's acquisitions selects it); ``source_items`` lists every item of every
acquisition; ``solar_day`` is ``first/last``; the attributes ``composite`` and ``composite_times``
say what was combined. Values: odd counts are one of the stored values, exactly; even counts the
mean of the two middle ones, rounded to the store's encoding (int16: at most half a stored unit,
5e-5 reflectance, from the median ``aom embed`` would compute from the acquisitions).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from pipelines.cubes.spec import INT16_FILL, INT16_SCALE, CubeSpec, Encoding, encode_reflectance
from pipelines.storage import json_safe


def median_block(block: np.ndarray, encoding: Encoding) -> np.ndarray:
    """``[T, C, H, W]`` stored values -> ``[1, C, H, W]`` stored median over the valid ones (all
    missing -> missing), in the same encoding (:func:`~pipelines.cubes.spec.encode_reflectance`)."""
    med: np.ndarray | None
    if encoding == "float16":
        from pipelines.embed.chips import nanmedian_time  # the embed reader's median of floats

        med = nanmedian_time(block.astype(np.float32))
    else:  # int16: sorted as integers, only the two middle values decoded
        from pipelines.cubes.shards import median_stored

        med = median_stored(block, INT16_SCALE, 0.0, float(INT16_FILL))
        assert med is not None  # integer storage with a positive scale always has a stored-domain median
    return encode_reflectance(med, encoding)[None]


def composite_group(ds: xr.Dataset, spec: CubeSpec) -> xr.Dataset:
    """The median composite of an encoded group dataset (lazy: one dask block per shard, all
    acquisitions of a shard in memory at once), ready for :meth:`CubeStore.write_group`."""
    import dask.array as da

    data = ds["reflectance"].data  # [T, C, H, W], one chunk per (time, shard)
    n = int(data.shape[0])
    stacked = data.rechunk({0: -1})
    med = da.map_blocks(
        median_block,
        stacked,
        encoding=spec.encoding,
        dtype=data.dtype,
        chunks=((1,), *stacked.chunks[1:]),
    )
    npix = int(np.prod(data.shape[1:]))
    valid = ~da.isnan(med) if spec.encoding == "float16" else med != INT16_FILL
    valid_fraction = (valid.sum(axis=(1, 2, 3)) / float(npix)).astype(np.float32)
    times = ds["time"].values
    items = [i for s in ds["source_items"].values for i in str(s).split(",") if i]
    days = [str(d) for d in ds["solar_day"].values] if "solar_day" in ds.coords else []
    out = ds.isel(time=[0]).copy()
    out["reflectance"] = (("time", "band", "y", "x"), med, ds["reflectance"].attrs)
    out = out.assign_coords(
        source_items=("time", np.asarray([",".join(dict.fromkeys(items))], dtype=object)),
        valid_fraction=("time", valid_fraction),
    )
    if days:
        out = out.assign_coords(solar_day=("time", np.asarray([f"{days[0]}/{days[-1]}"], dtype=object)))
    attrs: dict[str, Any] = dict(ds.attrs)
    attrs["composite"] = (
        f"median of the valid observations of {n} acquisition(s); even counts: the mean of the two "
        "middle values, rounded to the stored encoding"
    )
    attrs["composite_times"] = [str(t)[:19] for t in times.astype("datetime64[s]")]
    attrs["time_meaning"] = "earliest acquisition of the composite (attribute composite_times lists all)"
    out.attrs = json_safe(attrs)
    out.encoding = dict(ds.encoding)
    return out

"""What the metadata of a version says about its values and layout: one home for the fields the store's
Zarr attributes (``geoemb:``, :func:`pipelines.embeddings.store.geoemb_attrs`) and the STAC (``emb:``,
:mod:`pipelines.embeddings.stac`, :mod:`pipelines.embeddings.publish`) share.

* :func:`chip_layout`: ``geoemb:chip_layout`` and ``emb:chip_layout`` (both conventions define
  ``chip_size`` as the chip's ``[height, width]`` in pixels of the source imagery);
* :class:`ValueEncoding`: what one asset's values are: the store's arrays (:func:`store_encoding`) or a
  published COG (:func:`cog_encoding`), giving ``data_type`` and ``emb:quantization`` of that asset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.embeddings.format import EmbeddingsStoreError, EmbeddingsVersion
from pipelines.embeddings.quantize import QMAX


def finest_gsd(records: Sequence[Mapping[str, Any]]) -> float | None:
    """The finest ``gsd_m`` among the input bands of completion records (None when none is recorded)."""
    gsds = [
        float(b["gsd_m"])
        for r in records
        for b in (r.get("provenance") or {}).get("bands", [])
        if isinstance(b, Mapping) and b.get("gsd_m")
    ]
    return min(gsds) if gsds else None


def chip_layout(version: EmbeddingsVersion, input_gsd_m: float | None) -> dict[str, Any]:
    """``geoemb:chip_layout`` = ``emb:chip_layout``: one vector per token, each the embedding of a
    ``k x k`` patch of the finest input band (``k = token_ground_m / input_gsd_m``, 1 when the input GSD
    is unknown), tokens side by side (stride = chip size) on the version's per-zone token grid."""
    k = max(1, round(version.token_ground_m / input_gsd_m)) if input_gsd_m else 1
    return {
        "layout_type": "regular_grid",
        "chip_size": [k, k],
        "stride": [k, k],
        "grid_id": f"aom-utm-{version.tile_size_m:g}m-tiles-{version.token_ground_m:g}m-tokens",
    }


@dataclass(frozen=True)
class ValueEncoding:
    """How one asset holds the token vectors."""

    name: str
    """``int8-sqrt``, ``int8-linear``, ``float16`` (the store) or ``float32`` (COGs of a float16 store)"""
    data_type: str
    """the asset's data type (STAC ``data_type``, ``raster:bands.data_type``, ``geoemb:data_type``)"""
    quantization: Mapping[str, Any] | None
    """``emb:quantization`` / ``geoemb:quantization``; None when the values need no decoding"""
    rule: str
    """how to read the values back, one line (COG tag ``AOM_ENCODING``, asset ``aom:encoding``)"""
    scale: float = 1.0
    """band scale a loader applies (offset 0); 1 when the values are not a linear encoding"""
    nodata: float = field(default=-128.0)
    """the nodata value (NaN for floats)"""


_INT8_SQRT = ValueEncoding(
    "int8-sqrt",
    "int8",
    {"method": "int8-sqrt", "original_dtype": "float32", "quantized_dtype": "int8"},
    "int8-sqrt: v = sign(q) * (q / 127) ** 2; q = -128 is nodata",
)


_INT8_LINEAR = ValueEncoding(
    "int8-linear",
    "int8",
    {
        "method": "linear",
        "original_dtype": "float32",
        "quantized_dtype": "int8",
        "scale": [1.0 / QMAX],
        "offset": [0.0],
    },
    "int8-linear: v = q / 127; q = -128 is nodata",
    scale=1.0 / QMAX,
)


COG_ENCODINGS = ("int8-sqrt", "int8-linear")
"""What ``aom publish --encoding`` accepts (a float16 store is always published as float32)."""


_FLOAT32 = ValueEncoding(
    "float32", "float32", None, "float32 token vectors; NaN is nodata", nodata=float("nan")
)


def raster_encoding(dtype: str) -> ValueEncoding:
    """The encoding of one embedding raster written from token vectors (``aom embed-raster``, ``aom query
    export``): ``int8`` = the ``int8-sqrt`` codes (the store's, as ``aom publish`` writes them),
    ``float32`` = the vectors themselves."""
    if dtype == "int8":
        return _INT8_SQRT
    if dtype == "float32":
        return _FLOAT32
    raise EmbeddingsStoreError(f"unknown raster dtype {dtype!r}; choose float32 or int8")


def store_encoding(version: EmbeddingsVersion) -> ValueEncoding:
    """The encoding of the store's ``embeddings`` arrays."""
    if version.quantisation == "int8-sqrt":
        return _INT8_SQRT
    return ValueEncoding(
        "float16",
        "float16",
        {"method": "float16-cast", "original_dtype": "float32", "quantized_dtype": "float16"},
        "float16 token vectors; NaN is nodata",
        nodata=float("nan"),
    )


def cog_encoding(version: EmbeddingsVersion, encoding: str) -> ValueEncoding:
    """The encoding of the COGs ``aom publish --encoding <encoding>`` writes for ``version``: the store's
    int8 codes (``int8-sqrt``) or ``round(127 v)`` (``int8-linear``); float32 values (no decoding, no
    ``emb:quantization``) for a float16 store, whatever ``encoding``."""
    if encoding not in COG_ENCODINGS:
        raise EmbeddingsStoreError(f"unknown encoding {encoding!r}; choose one of {', '.join(COG_ENCODINGS)}")
    if version.quantisation == "float16":
        return ValueEncoding(
            "float32",
            "float32",
            None,
            "float32 token vectors (the store's float16 values); NaN is nodata",
            nodata=float("nan"),
        )
    return _INT8_SQRT if encoding == "int8-sqrt" else _INT8_LINEAR

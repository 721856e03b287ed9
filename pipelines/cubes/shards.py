"""Reading a group's reflectance at the decode floor: whole shards, stored integers, only the bands asked for.

``xr.open_zarr`` + ``isel`` goes through zarr's generic codec pipeline and xarray's mask-and-scale for
every window, which costs several times the decompression itself. A :class:`RawGroup` reads the
layout ``aom cubes`` writes directly (``docs/cubes.md``): one GET per shard (the shard's raw bytes),
the shard index parsed from its tail, and only the inner chunks of the requested bands decompressed
with the store's codec (blosc). Pixels stay in the stored dtype (int16 with a fill value, or
float16 with NaN); :meth:`RawGroup.to_float` converts them exactly as xarray's CF decoding does.

Arrays written with another codec chain (unsharded, other compressors) are read through zarr
(:class:`RawGroup` falls back, same output). A shard file that does not exist holds only the fill
value (zarr writes no empty shard), exactly as zarr reads it; any other access error propagates.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.errors import CubeDataError

__all__ = ["RawGroup", "ReadCounts", "shard_layout"]

_EMPTY = 2**64 - 1


@dataclass
class ReadCounts:
    """What a :class:`RawGroup` read since it was opened (for tests and benchmarks)."""

    shards: int = 0
    """Shard objects read (one GET each)."""
    bytes_read: int = 0
    """Compressed bytes read."""
    chunks_decoded: int = 0
    """Inner chunks decompressed."""
    bands: list[tuple[int, int]] = field(default_factory=list)
    """(time, band) of every band read, in order."""
    pixels: int = 0
    """Pixels returned (bands x height x width of every read)."""
    chunks: list[tuple[str, int, int]] = field(default_factory=list)
    """(shard path, offset, nbytes) of every inner chunk decompressed (the decode floor's input)."""


@dataclass(frozen=True)
class ShardLayout:
    """The reflectance array's layout, when it is the sharded blosc layout of ``aom cubes``."""

    shape: tuple[int, int, int, int]
    """(time, band, y, x)."""
    shard: tuple[int, int, int, int]
    """Shard shape."""
    chunk: tuple[int, int, int, int]
    """Inner chunk shape."""
    dtype: np.dtype[Any]
    """Stored dtype (int16 or float16)."""
    index_at_end: bool
    """Where the shard index is."""
    separator: str
    """Chunk key separator."""


def shard_layout(meta: dict[str, Any]) -> ShardLayout | None:
    """The :class:`ShardLayout` of a reflectance array's zarr.json, or None for any other codec chain."""
    try:
        codecs = meta["codecs"]
        if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
            return None
        conf = codecs[0]["configuration"]
        inner = [c["name"] for c in conf["codecs"]]
        index = [c["name"] for c in conf["index_codecs"]]
        if inner != ["bytes", "blosc"] or index != ["bytes", "crc32c"]:
            return None
        if conf["codecs"][0].get("configuration", {}).get("endian", "little") != "little":
            return None
        shape = tuple(int(n) for n in meta["shape"])
        shard = tuple(int(n) for n in meta["chunk_grid"]["configuration"]["chunk_shape"])
        chunk = tuple(int(n) for n in conf["chunk_shape"])
        if len(shape) != 4 or len(shard) != 4 or len(chunk) != 4 or chunk[0] != 1 or chunk[1] != 1:
            return None
        if meta.get("chunk_key_encoding", {}).get("name") != "default":
            return None
        sep = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
        return ShardLayout(
            shape,
            shard,
            chunk,
            np.dtype(meta["data_type"]),
            conf.get("index_location", "end") == "end",
            sep,
        )
    except (KeyError, TypeError, IndexError, ValueError):
        return None


class RawGroup:
    """The reflectance of one group, read shard by shard in its stored dtype.

    ``fs``/``path``: the filesystem and the group's directory; ``meta``: the group's consolidated
    metadata (its ``zarr.json``); ``zarr_array``: a callable returning the zarr array (fallback for
    other layouts, and what tests compare against).
    """

    def __init__(self, fs: Any, path: str, meta: dict[str, Any], zarr_array: Any) -> None:
        arrays = meta.get("consolidated_metadata", {}).get("metadata", {})
        refl = arrays.get("reflectance")
        if refl is None:
            raise CubeDataError(f"{path}: no reflectance array in the group metadata")
        attrs = refl.get("attributes", {})
        self.arrays: dict[str, Any] = arrays
        """The group's consolidated array metadata (name -> zarr.json of the array)."""
        self.attrs: dict[str, Any] = dict(meta.get("attributes") or {})
        """The group's attributes (sensor, gsd_m, ...), as xarray's ``Dataset.attrs``."""
        self.fs, self.path = fs, path.rstrip("/")
        self.layout = shard_layout(refl)
        self.shape: tuple[int, ...] = tuple(int(n) for n in refl["shape"])
        self.dtype = np.dtype(refl["data_type"])
        self.scale = float(attrs.get("scale_factor", 1.0))
        self.offset = float(attrs.get("add_offset", 0.0))
        fill = attrs.get("_FillValue", refl.get("fill_value"))
        self.fill: float | None = None if fill is None or self.dtype.kind == "f" else float(fill)
        self.stored_fill = refl.get("fill_value")
        self._zarr_array = zarr_array
        self.counts = ReadCounts()
        self._held: dict[str, bytes | None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_zarr_array": None, "_held": None}

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Keep the compressed bytes of every shard read until the block exits (several reads of one
        region then fetch each shard once)."""
        self._held = {}
        try:
            yield
        finally:
            self._held = None

    # -- reading --------------------------------------------------------------------------------
    def read(
        self, t: int, bands: Sequence[int], y0: int, x0: int, h: int, w: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        """[len(bands), h, w] stored values of acquisition ``t`` (fill value / NaN = missing); into
        ``out`` (that shape, the stored dtype) when given."""
        _, nb, ny, nx = self.shape
        if not (0 <= t < self.shape[0]) or y0 < 0 or x0 < 0 or y0 + h > ny or x0 + w > nx:
            raise CubeDataError(f"{self.path}: window t={t} {h}x{w} at ({y0}, {x0}) is outside {self.shape}")
        bands = [int(b) for b in bands]
        if any(not 0 <= b < nb for b in bands):
            raise CubeDataError(f"{self.path}: band index out of range 0..{nb - 1}: {bands}")
        self.counts.bands.extend((t, b) for b in bands)
        self.counts.pixels += len(bands) * h * w
        if self.layout is None:
            if self._zarr_array is None:
                raise CubeDataError(f"{self.path}: not the sharded layout and no zarr fallback")
            arr = self._zarr_array()
            got = np.asarray(arr.oindex[t, bands, y0 : y0 + h, x0 : x0 + w])
            self.counts.chunks_decoded += len(bands)  # not exact for the fallback
            if out is None:
                return got
            out[...] = got
            return out
        if out is None:
            out = np.empty((len(bands), h, w), dtype=self.dtype)
        elif out.shape != (len(bands), h, w) or out.dtype != self.dtype:
            raise ValueError(f"out is {out.shape} {out.dtype}, expected {(len(bands), h, w)} {self.dtype}")
        return self._read_sharded(t, bands, y0, x0, h, w, out)

    def _read_sharded(
        self, t: int, bands: list[int], y0: int, x0: int, h: int, w: int, out: np.ndarray
    ) -> np.ndarray:
        """Every pixel of ``out`` is written once: from its chunk, or the fill value where the chunk or
        its whole shard is absent (zarr writes neither when they hold only the fill value)."""
        lay = self.layout
        assert lay is not None
        fill = self.stored_fill if self.dtype.kind != "f" else np.nan
        if not bands or h == 0 or w == 0:
            return out
        _, sb, sy, sx = lay.shard
        _, _, cy, cx = lay.chunk
        per = (1, sb, sy // cy, sx // cx)  # chunks per shard along each axis
        n_chunks = per[1] * per[2] * per[3]
        by_shard: dict[int, list[int]] = {}
        for k, b in enumerate(bands):
            by_shard.setdefault(b // sb, []).append(k)
        for bs, ks in sorted(by_shard.items()):
            for ys in range(y0 // sy, (y0 + h - 1) // sy + 1):
                for xs in range(x0 // sx, (x0 + w - 1) // sx + 1):
                    key = lay.separator.join(["c", str(t), str(bs), str(ys), str(xs)])
                    data = self._get(f"{self.path}/reflectance/{key}")
                    if data is None:  # the shard's part of the window is fill
                        ya, yb = max(ys * sy, y0), min((ys + 1) * sy, y0 + h)
                        xa, xb = max(xs * sx, x0), min((xs + 1) * sx, x0 + w)
                        out[ks, ya - y0 : yb - y0, xa - x0 : xb - x0] = fill
                        continue
                    index = self._index(data, n_chunks)
                    for k in ks:
                        b_in = bands[k] - bs * sb
                        for iy in range(per[2]):
                            gy = ys * sy + iy * cy  # chunk origin in the array
                            if gy >= y0 + h or gy + cy <= y0 or gy >= self.shape[2]:
                                continue
                            for ix in range(per[3]):
                                gx = xs * sx + ix * cx
                                if gx >= x0 + w or gx + cx <= x0 or gx >= self.shape[3]:
                                    continue
                                j = (b_in * per[2] + iy) * per[3] + ix
                                off, n = int(index[j, 0]), int(index[j, 1])
                                ya, yb = max(gy, y0), min(gy + cy, y0 + h)
                                xa, xb = max(gx, x0), min(gx + cx, x0 + w)
                                if off == _EMPTY and n == _EMPTY:
                                    out[k, ya - y0 : yb - y0, xa - x0 : xb - x0] = fill
                                    continue
                                if off + n > len(data) - (n_chunks * 16 + 4) * lay.index_at_end:
                                    raise CubeDataError(f"{self.path}/reflectance/{key}: corrupt shard index")
                                self.counts.chunks.append((f"{self.path}/reflectance/{key}", off, n))
                                chunk = self._decode(data[off : off + n], cy, cx)
                                out[k, ya - y0 : yb - y0, xa - x0 : xb - x0] = chunk[
                                    ya - gy : yb - gy, xa - gx : xb - gx
                                ]
        return out

    def _get(self, path: str) -> bytes | None:
        if self._held is not None and path in self._held:
            return self._held[path]
        try:
            data: bytes | None = bytes(self.fs.cat_file(path))
        except FileNotFoundError:
            data = None  # zarr writes no shard that holds only the fill value
        if data is not None:
            self.counts.shards += 1
            self.counts.bytes_read += len(data)
        if self._held is not None:
            self._held[path] = data
        return data

    def _index(self, data: bytes, n_chunks: int) -> np.ndarray:
        lay = self.layout
        assert lay is not None
        size = n_chunks * 16
        if len(data) < size + 4:
            raise CubeDataError(f"{self.path}: shard shorter than its index")
        raw = data[-size - 4 : -4] if lay.index_at_end else data[:size]
        return np.frombuffer(raw, dtype="<u8").reshape(n_chunks, 2)

    def _decode(self, buf: bytes, cy: int, cx: int) -> np.ndarray:
        from numcodecs import blosc

        self.counts.chunks_decoded += 1
        raw = blosc.decompress(buf)
        a = np.frombuffer(raw, dtype=self.dtype.newbyteorder("<"))
        if a.size != cy * cx:
            raise CubeDataError(f"{self.path}: a chunk decoded to {a.size} values, expected {cy * cx}")
        return a.reshape(cy, cx)

    # -- small coordinate arrays ----------------------------------------------------------------
    def coord(self, name: str) -> np.ndarray | None:
        """A 1-D coordinate array of the group (``center_wavelength_nm``, ``common_name``, ...) read
        directly: one GET of its single chunk, decoded with its codecs (little-endian numbers or
        ``vlen-utf8`` strings, optionally ``zstd``), as xarray returns it (strings as an object
        array). ``None`` when the array has another layout (the caller opens the group instead);
        ``KeyError`` when the group has no such array."""
        meta = self.arrays[name]
        try:
            shape = [int(n) for n in meta["shape"]]
            chunk = [int(n) for n in meta["chunk_grid"]["configuration"]["chunk_shape"]]
            codecs = [(c["name"], c.get("configuration") or {}) for c in meta["codecs"]]
            sep = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
            kind = meta["data_type"]
            enc = meta["chunk_key_encoding"]["name"]
        except (KeyError, TypeError, ValueError):
            return None
        if len(shape) != 1 or chunk != shape or enc != "default" or not codecs:
            return None
        first, rest = codecs[0], [c[0] for c in codecs[1:]]
        if rest not in ([], ["zstd"]):
            return None
        if kind == "string":
            if first[0] != "vlen-utf8":
                return None
        elif first[0] != "bytes" or first[1].get("endian", "little") != "little":
            return None
        try:
            buf = bytes(self.fs.cat_file(f"{self.path}/{name}/c{sep}0"))
        except FileNotFoundError:
            return None  # only the fill value: let zarr say what that reads as
        from numcodecs import VLenUTF8, Zstd

        if rest:
            buf = Zstd().decode(buf)
        if kind == "string":
            values = VLenUTF8().decode(buf)
            arr = np.asarray(values, dtype=object)
        else:
            arr = np.frombuffer(buf, dtype=np.dtype(kind).newbyteorder("<")).astype(np.dtype(kind))
        if arr.shape != tuple(shape):
            raise CubeDataError(f"{self.path}/{name}: decoded {arr.shape}, expected {tuple(shape)}")
        return arr

    # -- conversion -----------------------------------------------------------------------------
    def to_float(self, raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """float32 reflectance with NaN = missing, equal to what ``read_window`` returns for the window
        (written into ``out``, float32 of ``raw``'s shape, when given)."""
        return decode_reflectance(raw, self.scale, self.offset, self.fill, out)

    def median(self, raw: np.ndarray) -> np.ndarray | None:
        """:func:`median_stored` of stored values ``[T, ...]`` (``None``: decode, then take the median)."""
        return median_stored(raw, self.scale, self.offset, self.fill)


def decode_reflectance(
    raw: np.ndarray, scale: float, offset: float, fill: float | None, out: np.ndarray | None = None
) -> np.ndarray:
    """Stored values -> float32 reflectance with NaN = missing (xarray's CF decoding, then float32);
    written into ``out`` (float32, ``raw``'s shape, may be a view) when given."""
    if raw.dtype.kind in "iu" and offset == 0.0 and raw.dtype.itemsize <= 4:
        # one ufunc pass: numpy multiplies in float64 (the integers are exact there) and rounds each
        # product to float32 on output, which is what astype(float64) * scale -> astype(float32) does
        res = np.multiply(
            raw,
            np.float64(scale),
            out=np.empty(raw.shape, np.float32) if out is None else out,
            casting="unsafe",
        )
        if fill is not None:
            np.copyto(res, np.float32(np.nan), where=raw == fill)
        return res
    if raw.dtype.kind == "f":
        conv = raw.astype(np.float64) * scale + offset if (scale, offset) != (1.0, 0.0) else raw
        res = np.asarray(conv, dtype=np.float32)
    elif raw.dtype == np.int16:  # with an offset, a 65 536-entry table: one gather instead of two passes
        res = _int16_table(scale, offset, fill)[raw.view(np.uint16)]
    else:
        res = _decode_ints(raw, scale, offset, fill)
    if out is None:
        return res
    out[...] = res
    return out


def median_stored(raw: np.ndarray, scale: float, offset: float, fill: float | None) -> np.ndarray | None:
    """float32 median over axis 0 of integer stored values, ignoring the fill value (all missing ->
    NaN; even counts -> the float64 mean of the two middle values, rounded to float32), computed in
    the stored domain: the values are sorted as integers across acquisitions by a sorting network
    (vectorised over pixels: numpy's sort along a short axis costs ~70 ns per pixel) and only the
    two middle ones decoded. Decoding is monotonic for ``scale > 0``, so this equals decoding all
    of them and taking the float median (``pipelines.embed.chips.nanmedian_time``), bit for bit.
    ``None`` where that does not hold (float storage, ``scale <= 0``): the caller decodes first."""
    if raw.dtype.kind not in "iu" or raw.dtype.itemsize > 4 or not scale > 0:
        return None
    t, shape = raw.shape[0], raw.shape[1:]
    if raw.dtype == np.int16 and fill == -32768:  # order-preserving uint16 keys, the fill sorting last
        key = raw.view(np.uint16) ^ np.uint16(0x8000)
        key -= np.uint16(1)
        top: int = 0xFFFF
    else:
        top = 2**40
        key = (
            raw.astype(np.int64)
            if fill is None
            else np.where(raw != fill, raw.astype(np.int64), np.int64(top))
        )
    keys = list(key.reshape(t, -1))  # [T] x [P]
    tmp = np.empty_like(keys[0])
    for i, j in _sorting_network(t):  # compare-exchange: keys[i] <= keys[j] after each
        np.minimum(keys[i], keys[j], out=tmp)
        np.maximum(keys[i], keys[j], out=keys[j])
        keys[i], tmp = tmp, keys[i]
    ordered = np.stack(keys)  # [T, P] ascending, missing last
    n = (ordered != top).sum(axis=0, dtype=np.int32)  # valid values per pixel
    flat, pos = ordered.reshape(-1), np.arange(ordered.shape[1])
    lo = np.take(flat, np.clip((n - 1) // 2, 0, t - 1) * ordered.shape[1] + pos)
    hi = np.take(flat, np.clip(n // 2, 0, t - 1) * ordered.shape[1] + pos)
    if top == 0xFFFF:
        lo = ((lo + np.uint16(1)) ^ np.uint16(0x8000)).view(np.int16)
        hi = ((hi + np.uint16(1)) ^ np.uint16(0x8000)).view(np.int16)
    # where no value is valid the keys decode to garbage, replaced by NaN below
    a = decode_reflectance(lo.astype(raw.dtype, copy=False), scale, offset, None)
    b = decode_reflectance(hi.astype(raw.dtype, copy=False), scale, offset, None)
    with np.errstate(over="ignore", invalid="ignore"):
        med = a + b  # a <= b, both finite: the float32 sum halved is the float64 mean rounded
    med *= np.float32(0.5)
    med[n == 0] = np.nan
    return med.reshape(shape)


@functools.lru_cache(maxsize=64)
def _sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators ``(i, j)``, ``i < j``, of Batcher's odd-even merge sort on ``n`` inputs (the network
    for the next power of two, without the comparators that touch the padding, which would hold
    +inf and never move)."""
    size = 1
    while size < n:
        size *= 2
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


def _decode_ints(raw: np.ndarray, scale: float, offset: float, fill: float | None) -> np.ndarray:
    # xarray decodes integers with a float scale_factor in float64 (the attribute's type), masks fill
    f = raw.astype(np.float64)
    if scale != 1.0:
        f *= scale
    if offset != 0.0:
        f += offset
    out = f.astype(np.float32)
    if fill is not None:
        out[raw == fill] = np.nan
    return out


@functools.lru_cache(maxsize=16)
def _int16_table(scale: float, offset: float, fill: float | None) -> np.ndarray:
    """float32 reflectance of every int16 value, indexed by the value's uint16 bit pattern."""
    values = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    table = np.empty(65536, dtype=np.float32)
    table[values.view(np.uint16)] = _decode_ints(values, scale, offset, fill)
    return table


def open_raw_group(fs: Any, path: str, zarr_array: Any) -> RawGroup:
    """The :class:`RawGroup` of the group directory ``path`` (one GET: its consolidated ``zarr.json``)."""
    try:
        meta = json.loads(fs.cat_file(f"{path.rstrip('/')}/zarr.json"))
    except FileNotFoundError:
        raise CubeDataError(f"{path}: no group metadata (zarr.json)") from None
    if not isinstance(meta, dict):
        raise CubeDataError(f"{path}: group metadata is not an object")
    return RawGroup(fs, path, meta, zarr_array)


def chunk_count(shape: Sequence[int], chunk: Sequence[int]) -> int:
    """Number of chunks of ``chunk`` shape covering ``shape`` (tests)."""
    return math.prod(-(-int(s) // int(c)) for s, c in zip(shape, chunk))

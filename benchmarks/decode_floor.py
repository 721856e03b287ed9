"""The decode floor both loader benchmarks compare against (``loader_vs_floor``, ``embed_read_vs_floor``).

Floor = the CPU time of reading the raw bytes of exactly the shards a run touched, decompressing
exactly the inner chunks it decoded with the store's codec (blosc, called directly), and converting
only the pixels it used (stored int16 -> float32 reflectance, normalised). Nothing else: no index,
no plan, no slicing, no Python object per chip. Measured in CPU time of this process, one thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pipelines.cubes.shards import RawGroup


def floor_cpu_s(chunks: Sequence[tuple[str, int, int]], used_pixels: int, repeats: int = 1) -> float:
    """CPU seconds (best of ``repeats``) to read the shards of ``chunks`` (path, offset, nbytes; local
    files), decompress those chunks and convert ``used_pixels`` int16 values to normalised float32."""
    from numcodecs import blosc

    paths = sorted({p for p, _, _ in chunks})
    src = np.zeros(max(1, used_pixels), dtype=np.int16)
    best = float("inf")
    for _ in range(max(1, repeats)):
        c0 = time.process_time()
        data = {}
        for p in paths:
            with open(p, "rb") as fh:
                data[p] = fh.read()
        for p, off, n in chunks:
            blosc.decompress(data[p][off : off + n])
        out = src.astype(np.float32)
        out *= np.float32(1e-4)
        out -= np.float32(0.1)
        out /= np.float32(0.05)
        best = min(best, time.process_time() - c0)
    return best


def collect_chunks(groups: Iterable[RawGroup]) -> list[tuple[str, int, int]]:
    """Every chunk the given ``RawGroup`` objects decoded (``counts.chunks``)."""
    out: list[tuple[str, int, int]] = []
    for g in groups:
        out.extend(g.counts.chunks)
    return out
